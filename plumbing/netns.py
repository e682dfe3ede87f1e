"""Network namespaces: which one is "the host", entering one safely, creating container ones.

Every netlink and /proc/sys access for a managed namespace runs in a short-lived thread that
first joins that namespace (setns moves only the calling thread) and checks it really did,
so nothing can land in the namespace this process happens to run in.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

from bridgescope.collector.kernel import tools
from bridgescope.collector.kernel.namespaces import current_netns_path, netns_name_of, resolve_netns
from bridgescope.collector.kernel.setns import CLONE_NEWNET, CLONE_NEWNS, check, enter, libc, on_thread, setns
from bridgescope.plumbing.errors import PlumbingError

MS_BIND, MS_REC, MS_SHARED, MNT_DETACH = 4096, 16384, 1 << 20, 2
CLONE_FS = 0x00000200
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
NETNS_DIR = Path("/run/netns")
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


def resolve(host: str | None) -> HostNs:
    """A name (in /run/netns) or an nsfs path; None = the namespace we run in. Creates nothing."""
    if host is None:
        # under `ip netns exec NAME` the current namespace is NAME's: behave as `--netns NAME`
        here = current_netns_path()
        name = netns_name_of(here)
        if name:
            return HostNs(key=name, name=name, path=str(NETNS_DIR / name))
        return HostNs(key="host", name=None, path=here)
    path = resolve_netns(host).path  # validates the name; never creates anything
    name = Path(path).name if Path(path).parent == NETNS_DIR else None
    return HostNs(key=name or f"ns-{_inode(path)}", name=name, path=path)


def _enter(path: str) -> None:
    enter(path)
    _here.path = path


# Which namespace this thread joined (worker threads only): work for that namespace asked
# from inside such a thread runs right there instead of waiting on another thread.
_here = threading.local()


def _here_netlink() -> IPRoute:
    ipr = getattr(_here, "ipr", None)
    if ipr is None:
        ipr = _here.ipr = IPRoute()
    return ipr


class _Worker:
    """One thread parked inside a namespace for the length of a session, with its own
    netlink socket, so a command pays for entering and for the socket once."""

    def __init__(self, path: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bridgescope-netns",
                                        initializer=_enter, initargs=(path,))
        self.path = path

    def call(self, fn: Callable[[], T]) -> T:
        try:
            return self._pool.submit(fn).result()
        except BrokenExecutor:
            raise OSError(f"cannot enter network namespace {self.path}") from None

    def netlink(self, fn: Callable[[IPRoute], T]) -> T:
        return self.call(lambda: fn(_here_netlink()))

    def close(self) -> None:
        def close_socket() -> None:
            ipr = getattr(_here, "ipr", None)
            if ipr is not None:
                ipr.close()
        try:
            self._pool.submit(close_socket).result()
        except BrokenExecutor:
            pass
        self._pool.shutdown(wait=True)


_session: ContextVar[dict[str, _Worker] | None] = ContextVar("bridgescope_netns_session",
                                                            default=None)


@contextmanager
def session() -> Iterator[None]:
    """Within it, work for one namespace reuses one parked thread and one netlink socket.
    Leaving ends the threads, so none keeps a removed namespace alive."""
    if _session.get() is not None:
        yield
        return
    workers: dict[str, _Worker] = {}
    token = _session.set(workers)
    try:
        yield
    finally:
        _session.reset(token)
        for worker in workers.values():
            worker.close()


def _worker(path: str) -> _Worker | None:
    workers = _session.get()
    if workers is None:
        return None
    if path not in workers:
        workers[path] = _Worker(path)
    return workers[path]


def _one_shot(path: str, fn: Callable[[], T]) -> T:
    def inside() -> T:
        _enter(path)
        return fn()
    return on_thread(inside)


def run_in(path: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that has joined the namespace at path; re-raise what it raises.
    Processes started by fn (fork copies the calling thread's namespaces) run there too."""
    if getattr(_here, "path", None) == path:
        return fn()
    worker = _worker(path)
    return worker.call(fn) if worker else _one_shot(path, fn)


def with_netlink(path: str, fn: Callable[[IPRoute], T]) -> T:
    """fn(ipr) with a netlink socket opened (lazily, so: in that thread) inside the namespace."""
    if getattr(_here, "path", None) == path and hasattr(_here, "ipr"):
        return fn(_here.ipr)
    worker = _worker(path)
    if worker:
        return worker.netlink(fn)

    def inner() -> T:
        with IPRoute() as ipr:
            return fn(ipr)
    return _one_shot(path, inner)


def run_command(path: str, argv: list[str], stdin: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
    """argv inside the namespace, started from a thread already there (no nsenter exec)."""
    return run_in(path, lambda: subprocess.run(tools.command(argv), input=stdin, capture_output=True,
                                               text=True, timeout=timeout, env=tools.ENV))


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


def write_link_sysctl(path: str, ifname: str, leaf: str, value: str) -> None:
    def write() -> None:
        with open(f"/proc/sys/net/ipv4/conf/{ifname}/{leaf}", "w", encoding="ascii") as fh:
            fh.write(value)
    run_in(path, write)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


@dataclass(frozen=True)
class Propagation:
    """How a mount receives and passes on mounts: its peer group, and the group it is a slave of."""
    shared: int | None
    master: int | None


def netns_dir_propagation(mountinfo: str) -> Propagation | None:
    """The propagation of the mount on /run/netns in a mountinfo text (the topmost one), or
    None when /run/netns is no mount point there."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[4] == str(NETNS_DIR):
            tags = dict(f.split(":", 1) for f in fields[6:fields.index("-")] if ":" in f)
            found = Propagation(int(tags["shared"]) if "shared" in tags else None,
                                int(tags["master"]) if "master" in tags else None)
    return found


def _mountinfo(pid: str) -> str:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as fh:
        return fh.read()


def _ancestors() -> Iterator[int]:
    pid = os.getppid()
    while pid > 1:
        yield pid
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return


def pin_mounts() -> str | None:
    """Where a namespace must be pinned so that it outlives this process: None when our own
    /run/netns passes pins on (the usual case), else the mount namespace of a process whose
    /run/netns ours is a slave of. `ip netns exec` runs its command in a private mount
    namespace with /run/netns a slave: a bind mount made there would vanish, veth and all,
    when the command exits. Raises when no such namespace can be found."""
    ours = netns_dir_propagation(_mountinfo("thread-self"))
    if ours is None or ours.master is None:
        return None
    for pid in (1, *_ancestors()):
        try:
            theirs = netns_dir_propagation(_mountinfo(str(pid)))
        except OSError:
            continue  # gone, or not ours to read
        if theirs is not None and theirs.shared == ours.master and theirs.master is None \
                and _can_open(f"/proc/{pid}/ns/mnt"):
            return f"/proc/{pid}/ns/mnt"
    raise PlumbingError("pin the network namespace",
                        f"this runs in a private mount namespace ({NETNS_DIR} is a slave mount, as "
                        "under `ip netns exec`) and the host's cannot be found; a namespace made "
                        "here would vanish on exit: use --netns NAME instead")


def _can_open(path: str) -> bool:
    """Some hosts keep pid 1's namespaces out of reach even for root."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def _join_mounts(path: str) -> None:
    """Move the calling thread, only, into the mount namespace at path: setns refuses a mount
    namespace to a thread sharing its filesystem attributes, so it stops sharing them first."""
    check(libc.unshare(CLONE_FS), "cannot leave the shared filesystem attributes")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNS)
    except OSError as err:
        raise OSError(err.errno, f"cannot enter the host's mount namespace: {err.strerror}") from None
    finally:
        os.close(fd)


def _pinning(fn: Callable[[], T]) -> T:
    """fn in a fresh thread that may change its own namespaces, run in the host's mount
    namespace when ours is private (pin_mounts): pins made (or removed) there are everyone's,
    and reach us too, since our /run/netns receives its mounts."""
    mounts = pin_mounts()

    def pin() -> T:
        if mounts is not None:
            _join_mounts(mounts)
        return fn()
    return on_thread(pin, "bridgescope-netns-pin")


def _share_netns_dir() -> None:
    """/run/netns as `ip netns add` leaves it: a mount point of its own, shared, so every
    mount namespace sees the namespaces pinned in it."""
    NETNS_DIR.mkdir(mode=0o755, exist_ok=True)
    where = str(NETNS_DIR).encode()
    if libc.mount(b"", where, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    what = f"cannot make {NETNS_DIR} a shared mount"
    check(libc.mount(where, where, b"none", MS_BIND | MS_REC, None), what)
    check(libc.mount(b"", where, b"none", MS_SHARED | MS_REC, None), what)


def _create_here(target: str) -> None:
    """In a fresh thread: a new namespace for this thread, pinned by a bind mount at target."""
    what = f"cannot create network namespace {target}"
    check(libc.unshare(CLONE_NEWNET), what)
    check(libc.mount(b"/proc/thread-self/ns/net", target.encode(), None, MS_BIND, None), what)
    _loopback_up()


def _loopback_up() -> None:
    """`ip link set lo up` in the calling thread's namespace, with one ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(sock, SIOCSIFFLAGS, ifreq)


def _unpin(path: str) -> None:
    libc.umount2(path.encode(), MNT_DETACH)
    os.unlink(path)


def create(name: str) -> str:
    """A named namespace (bind-mounted under /run/netns, like `ip netns add`), lo up. The pin
    is made in the host's mount namespace, so it outlives a private one we may run in."""
    path = str(NETNS_DIR / name)

    def make() -> None:
        _share_netns_dir()
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            _create_here(path)
        except BaseException:
            _unpin(path)
            raise
    _pinning(make)
    return path


def remove(name: str) -> None:
    """Unpin a named namespace (in the mount namespace where create pinned it)."""
    path = str(NETNS_DIR / name)
    if exists(name):
        _pinning(lambda: _unpin(path))


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


def destroy(name: str) -> list[int]:
    """Stop every process inside the named namespace, then remove it. Idempotent.
    Returns the processes stopped."""
    path = str(NETNS_DIR / name)
    if not os.path.exists(path):
        return []
    # A session's thread parked in it would keep the old namespace alive and serve a new one
    # made under the same name (restore rebuilding a container) from the old one.
    workers = _session.get()
    worker = workers.pop(path, None) if workers is not None else None
    if worker is not None:
        worker.close()
    pids = pids_in(path)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    remove(name)
    return pids
