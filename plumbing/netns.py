"""Network namespaces: which one is "the host", entering one safely, creating container ones.

Every netlink and /proc/sys access for a managed namespace runs in a short-lived thread that
first joins that namespace (setns moves only the calling thread) and checks it really did,
so nothing can land in the namespace this process happens to run in.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pr2_netns

from bridgescope.collector.errors import NamespaceNotFound

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
T = TypeVar("T")


@dataclass(frozen=True)
class HostNs:
    """The namespace bridgescope treats as the host."""
    key: str  # state key: the ip-netns name, or "host"
    name: str | None  # ip-netns name, None for a namespace without one (the real host)
    path: str  # an nsfs path that stays valid while we work

    def container_netns(self, container: str) -> str:
        """Unique per managed host and recognisable: `<host>-<ctr>` or `bs-<ctr>`."""
        return f"{self.name}-{container}" if self.name else f"bs-{container}"


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def _name_of_current() -> str | None:
    """Under `ip netns exec NAME` the current namespace is NAME's: behave as `--netns NAME`."""
    here = _inode("/proc/thread-self/ns/net")
    if not NETNS_DIR.is_dir():
        return None
    for entry in sorted(NETNS_DIR.iterdir()):
        try:
            if entry.stat().st_ino == here:
                return entry.name
        except OSError:
            continue
    return None


def resolve(host: str | None) -> HostNs:
    """A name (in /run/netns) or an nsfs path; None = the namespace we run in. Creates nothing."""
    if host is None:
        name = _name_of_current()
        if name:
            return HostNs(key=name, name=name, path=str(NETNS_DIR / name))
        return HostNs(key="host", name=None,
                      path=f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net")
    path = host if "/" in host else str(NETNS_DIR / host)
    if not os.path.exists(path):
        raise NamespaceNotFound(host)
    name = Path(path).name if Path(path).parent == NETNS_DIR else None
    return HostNs(key=name or f"ns-{_inode(path)}", name=name, path=path)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
    if _inode("/proc/thread-self/ns/net") != _inode(path):
        raise OSError(f"entering {path} did not take effect")


def run_in(path: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that has joined the namespace at path; re-raise what it raises."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _enter(path)
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            box["error"] = err

    thread = threading.Thread(target=target, name="bridgescope-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")  # type: ignore[return-value]


def with_netlink(path: str, fn: Callable[[IPRoute], T]) -> T:
    """fn(ipr) with a netlink socket opened (lazily, so: in that thread) inside the namespace."""
    def inner() -> T:
        with IPRoute() as ipr:
            return fn(ipr)
    return run_in(path, inner)


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(path: str, key: str) -> str:
    def read() -> str:
        with open(sysctl_path(key), encoding="ascii") as fh:
            return fh.read().strip()
    return run_in(path, read)


def write_sysctl(path: str, key: str, value: str) -> None:
    def write() -> None:
        with open(sysctl_path(key), "w", encoding="ascii") as fh:
            fh.write(value)
    run_in(path, write)


def sysctl_key_for_link(ifname: str, leaf: str) -> str:
    # Interface names may contain '.', which /proc/sys spells as '/'; build the path directly.
    return f"net.ipv4.conf.{ifname}.{leaf}"


def write_link_sysctl(path: str, ifname: str, leaf: str, value: str) -> None:
    def write() -> None:
        with open(f"/proc/sys/net/ipv4/conf/{ifname}/{leaf}", "w", encoding="ascii") as fh:
            fh.write(value)
    run_in(path, write)


def thread_proc_net(path: str, leaf: str) -> str:
    """/proc/thread-self/net/<leaf> as seen inside the namespace (not the process's)."""
    def read() -> str:
        with open(f"/proc/thread-self/net/{leaf}", encoding="ascii") as fh:
            return fh.read()
    return run_in(path, read)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create(name: str) -> str:
    """A named namespace (bind-mounted under /run/netns, like `ip netns add`), lo up."""
    pr2_netns.create(name)
    path = str(NETNS_DIR / name)
    with_netlink(path, lambda ipr: ipr.link("set", index=1, state="up"))
    return path


def remove(name: str) -> None:
    if exists(name):
        pr2_netns.remove(name)


def nsenter(path: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={path}", "--", *argv]


def pids_in(path: str) -> list[int]:
    """Processes living in the namespace at path (they would keep it alive after removal)."""
    key = os.stat(path)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (key.st_dev, key.st_ino):
            out.append(int(entry))
    return out


def destroy(name: str) -> None:
    """Stop every process inside the named namespace, then remove it. Idempotent."""
    path = str(NETNS_DIR / name)
    if not os.path.exists(path):
        return
    for pid in pids_in(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    remove(name)
