"""Finding every network namespace on the machine and giving each a name a person recognises.

Sources: nsfs bind mounts listed in /proc/self/mountinfo (ip netns, Docker's
/run/docker/netns, Podman, CNI) and /proc/<pid>/ns/net for namespaces only a process holds.
Identity is (st_dev, st_ino) of the nsfs inode. Unreadable entries are skipped: on sandboxed
hosts /proc/1/ns/net is EACCES, so "the host" is wherever this thread runs, never pid 1.
Nothing here ever creates a namespace.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bridgescope.collector.errors import NamespaceNotFound
from bridgescope.collector.kernel.containers import (
    configured_sockets,
    conmon_container_names,
    engine_container_names,
)
from bridgescope.collector.kernel.procfs import read_small
from bridgescope.collector.kernel.setns import CLONE_NEWNET
from bridgescope.collector.model import Namespace, namespace_id

NETNS_DIRS = ("/run/netns", "/var/run/netns")
NS_GET_NSTYPE = 0xB703
_SKIP = (errno.EACCES, errno.ENOENT, errno.ESRCH, errno.EPERM)

NsKey = tuple[int, int]  # (st_dev, st_ino)


@dataclass(frozen=True)
class NetnsRef:
    path: str
    name: str


def current_netns_path() -> str:
    """The namespace the calling thread runs in (threads may differ from the process)."""
    return f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"


def resolve_netns(name_or_path: str | None) -> NetnsRef:
    """A netns name (looked up in /run/netns), an nsfs path, or None for the current one.

    Raises NamespaceNotFound for anything that is not an existing network namespace.
    """
    if name_or_path is None:
        path = current_netns_path()
        return NetnsRef(path, netns_name_of(path) or "host")
    if "/" in name_or_path:
        path = name_or_path
    else:
        _check_netns_name(name_or_path)
        path = os.path.join(NETNS_DIRS[0], name_or_path)
    if not is_netns(path):
        raise NamespaceNotFound(name_or_path)
    return NetnsRef(path, name_or_path if "/" not in name_or_path else (netns_name_of(path) or path))


def _check_netns_name(name: str) -> None:
    if not name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise NamespaceNotFound(name)


def is_netns(path: str) -> bool:
    """True when path opens to a network namespace (an nsfs inode of type NEWNET)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def ns_key(path: str) -> NsKey | None:
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno in _SKIP:
            return None
        raise
    return (st.st_dev, st.st_ino)


def netns_name_of(path: str) -> str | None:
    """The ip-netns name that pins the namespace at path (same device and inode), if any."""
    key = ns_key(path)
    for directory in NETNS_DIRS:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            if ns_key(os.path.join(directory, entry)) == key:
                return entry
    return None


def nsfs_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points of network-namespace nsfs mounts, in mountinfo order."""
    paths = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            parts = line.split()
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            if parts[sep + 1] == "nsfs" and parts[3].startswith("net:"):
                paths.append(_unescape_mount(parts[4]))
    return paths


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _proc_holders(proc: str) -> dict[NsKey, list[int]]:
    held: dict[NsKey, list[int]] = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            key = ns_key(f"{proc}/{entry}/ns/net")
            if key is not None:
                held.setdefault(key, []).append(int(entry))
    return held


def _comm(proc: str, pid: int) -> str | None:
    try:
        return read_small(f"{proc}/{pid}/comm").strip()
    except OSError:
        return None


def _mounted(mountinfo: str) -> dict[NsKey, list[str]]:
    """The namespaces the mount table shows (netns files and other bind mounts), with their paths."""
    mounts: dict[NsKey, list[str]] = {}
    for path in nsfs_mounts(mountinfo):
        key = ns_key(path)
        if key is not None:
            mounts.setdefault(key, []).append(path)
    return mounts


def _host_key(host: NetnsRef) -> NsKey:
    key = ns_key(host.path)
    if key is None:
        raise NamespaceNotFound(host.name)
    return key


def discover(host: NetnsRef | None = None, *, mountinfo: str = "/proc/self/mountinfo",
             proc: str = "/proc", engine_sockets: Iterable[str] | None = None) -> list[Namespace]:
    """Every network namespace visible from here, host first, the rest sorted by inode."""
    host = host or resolve_netns(None)
    mounts = _mounted(mountinfo)
    holders = _proc_holders(proc)
    host_key = _host_key(host)
    keys = set(mounts) | set(holders) | {host_key}
    sockets = configured_sockets() if engine_sockets is None else tuple(engine_sockets)
    guests = {key: pids for key, pids in holders.items() if key != host_key}
    containers = {**conmon_container_names(guests, proc), **_engine_names(sockets, proc)}
    found = [
        _namespace(key, mounts.get(key, []), sorted(holders.get(key, [])), key == host_key,
                   containers, proc, host)
        for key in keys
    ]
    return sorted(found, key=lambda ns: (not ns.is_host, ns.inode))


def _engine_names(sockets: tuple[str, ...], proc: str) -> dict[NsKey, str]:
    """Docker's and Podman's container names, and containerd's pods as `namespace/pod`."""
    if not any(os.path.exists(path) for path in sockets):
        return {}
    # containerd's gRPC framing (and logging) only when an engine socket exists
    from bridgescope.collector.kernel.containerd import pod_names

    return {**engine_container_names(sockets, proc=proc), **pod_names(sockets, proc)}


def rediscover(known: Iterable[Namespace], host: NetnsRef, *, mountinfo: str = "/proc/self/mountinfo",
               proc: str = "/proc", engine_sockets: Iterable[str] | None = None) -> list[Namespace]:
    """`discover` from the mount table alone, for when it or a netns directory changed: the
    processes known to hold a namespace are asked again, but /proc is not walked (a namespace
    that only a new process holds waits for the next full discovery). Known namespaces keep
    their names; only new ones ask the engines."""
    before = {ns.inode: ns for ns in known}
    mounts = _mounted(mountinfo)
    host_key = _host_key(host)
    holders: dict[NsKey, list[int]] = {}
    for ns in before.values():
        for pid in ns.pids:
            key = ns_key(f"{proc}/{pid}/ns/net")
            if key is not None and key[1] == ns.inode:
                holders.setdefault(key, []).append(pid)
    keys = set(mounts) | set(holders) | {host_key}
    new = [key for key in keys if key[1] not in before]
    sockets = configured_sockets() if engine_sockets is None else tuple(engine_sockets)
    containers = _engine_names(sockets, proc) if new else {}
    found = [_namespace(key, mounts.get(key, []), holders.get(key, []), key == host_key, containers, proc, host)
             if key[1] not in before else
             _renewed(before[key[1]], key, mounts.get(key, []), holders.get(key, []), key == host_key, proc, host)
             for key in keys]
    return sorted(found, key=lambda ns: (not ns.is_host, ns.inode))


def _renewed(ns: Namespace, key: NsKey, paths: list[str], pids: list[int], is_host: bool, proc: str,
             host: NetnsRef) -> Namespace:
    """A known namespace with its current mounts and holders. Its name (perhaps an engine's)
    stays, unless it was the name of a netns file that is gone."""
    if _paths(paths, is_host, host) == ns.paths:
        if ns.pids == tuple(pids) and ns.is_host == is_host:
            return ns  # the same object: nothing to compare or take in downstream
        return dataclasses.replace(ns, pids=tuple(pids), is_host=is_host)
    fresh = _namespace(key, paths, pids, is_host, {}, proc, host)
    if ns.name in _file_names(ns.paths) and ns.name not in _file_names(fresh.paths):
        return fresh
    return dataclasses.replace(fresh, name=ns.name)


def _file_names(paths: Iterable[str]) -> set[str]:
    return {os.path.basename(p) for p in paths if os.path.dirname(p) in NETNS_DIRS}


def _namespace(key: NsKey, paths: list[str], pids: list[int], is_host: bool,
               containers: Mapping[NsKey, str], proc: str, host: NetnsRef) -> Namespace:
    paths = _paths(paths, is_host, host)
    return Namespace(
        id=namespace_id(key[1]),
        name=_name(key, list(paths), pids, is_host, containers, proc, host),
        inode=key[1],
        paths=paths,
        pids=tuple(pids),
        is_host=is_host,
    )


def _paths(paths: list[str], is_host: bool, host: NetnsRef) -> tuple[str, ...]:
    if is_host and host.path not in paths and not host.path.startswith("/proc/"):
        paths = [host.path, *paths]
    return tuple(dict.fromkeys(paths))


def _name(key: NsKey, paths: list[str], pids: list[int], is_host: bool,
          containers: Mapping[NsKey, str], proc: str, host: NetnsRef) -> str:
    if key in containers and not is_host:  # Podman's namespaces also sit in /run/netns
        return containers[key]
    for path in paths:
        if os.path.dirname(path) in NETNS_DIRS:
            return os.path.basename(path)
    if is_host:
        return host.name
    if 2 in pids and _comm(proc, 2) == "kthreadd":
        return "root"  # kernel threads live in the machine's initial namespace
    for pid in pids:
        comm = _comm(proc, pid)
        if comm is not None:
            return f"pid {pid} ({comm})"
    return f"net:[{key[1]}]"


def open_path(ns: Namespace) -> str:
    """A path that opens this namespace: its first mount, else a holding process."""
    if ns.paths:
        return ns.paths[0]
    if ns.pids:
        # Our own pid first: other processes' entries may turn unreadable (pid 1 often is).
        pid = os.getpid() if os.getpid() in ns.pids else ns.pids[0]
        return f"/proc/{pid}/ns/net"
    raise NamespaceNotFound(ns.name)
