"""Network namespaces: which one is "the host", entering one safely, creating container ones.

Every netlink and /proc/sys access for a managed namespace runs in a short-lived thread that
first joins that namespace (setns moves only the calling thread) and checks it really did,
so nothing can land in the namespace this process happens to run in.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pr2_netns

from bridgescope.collector.namespaces import resolve_netns
from bridgescope.collector.setns import CLONE_NEWNET, enter

MS_BIND = 4096
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
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
    path = resolve_netns(host).path  # validates the name; never creates anything
    name = Path(path).name if Path(path).parent == NETNS_DIR else None
    return HostNs(key=name or f"ns-{_inode(path)}", name=name, path=path)


def _enter(path: str) -> None:
    enter(path)
    if _inode("/proc/thread-self/ns/net") != _inode(path):
        raise OSError(f"entering {path} did not take effect")
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
    return run_in(path, lambda: subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                               timeout=timeout))


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


def _netns_dir_shared() -> bool:
    """/run/netns is a shared mount point (as `ip netns` leaves it), so our bind mounts of
    new namespaces are visible to everyone."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            return any(f" {NETNS_DIR} " in line and "shared:" in line for line in fh)
    except OSError:
        return False


def _create_here(target: str) -> None:
    """In a fresh thread: a new namespace for this thread, pinned by a bind mount at target."""
    if _libc.unshare(CLONE_NEWNET) != 0 or \
            _libc.mount(b"/proc/thread-self/ns/net", target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot create network namespace {target}: {os.strerror(err)}")
    _loopback_up()


def _loopback_up() -> None:
    """`ip link set lo up` in the calling thread's namespace, with one ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(sock, SIOCSIFFLAGS, ifreq)


def create(name: str) -> str:
    """A named namespace (bind-mounted under /run/netns, like `ip netns add`), lo up."""
    path = str(NETNS_DIR / name)
    if not _netns_dir_shared():
        pr2_netns.create(name)  # sets /run/netns up the way ip-netns does
        with_netlink(path, lambda ipr: ipr.link("set", index=1, state="up"))
        return path
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            _create_here(path)
        except BaseException as err:  # noqa: BLE001 - handed back below
            box["error"] = err
    thread = threading.Thread(target=target, name="bridgescope-netns-create")
    thread.start()
    thread.join()
    if "error" in box:
        if os.path.ismount(path):
            pr2_netns.remove(name)
        else:
            os.unlink(path)
        raise box["error"]
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
    # A session's thread parked in it would keep the old namespace alive and serve a new one
    # made under the same name (restore rebuilding a container) from the old one.
    workers = _session.get()
    worker = workers.pop(path, None) if workers is not None else None
    if worker is not None:
        worker.close()
    for pid in pids_in(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    remove(name)
