"""The one way into a namespace, for the collector and the plumbing alike.

Python 3.11 has no os.setns, so this module holds the process's one libc handle. setns(2)
moves only the calling thread, so work for another namespace runs on a thread of its own:
`run_in(path, fn)` runs fn on a fresh thread that has joined the namespace (and checked that
it did), `inside(path)` moves the calling thread there and back, `hop(items, fn)` visits
several namespaces in turn on one thread.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
T = TypeVar("T")
U = TypeVar("U")

libc = ctypes.CDLL(None, use_errno=True)


def check(status: int, what: str) -> None:
    """Raise OSError for a failed libc call (status != 0), with errno's text after `what`."""
    if status != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace behind fd."""
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at path (for good), and check that
    it did: nothing may land in the namespace this process happens to run in."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
    except OSError as err:
        raise OSError(err.errno, f"cannot enter network namespace {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    if _inode("/proc/thread-self/ns/net") != _inode(path):
        raise OSError(f"entering {path} did not take effect")


@contextmanager
def inside(path: str) -> Iterator[None]:
    """Move the calling thread into the namespace at path, and back afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(path)
        try:
            yield
        finally:
            setns(home)  # a thread left in a foreign namespace would poison every later read
    finally:
        os.close(home)


def on_thread(fn: Callable[[], T], name: str = "bridgescope-netns") -> T:
    """fn on a fresh thread (free to change its own namespaces); re-raise what it raises."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:
            box["error"] = err
    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")  # type: ignore[return-value]


def run_in(path: str, fn: Callable[[], T]) -> T:
    """fn on a fresh thread that has joined the network namespace at path. Processes fn
    starts run there too (fork copies the calling thread's namespaces)."""
    def there() -> T:
        enter(path)
        return fn()
    return on_thread(there)


def hop(items: Iterable[tuple[int, U]], fn: Callable[[U], T]) -> list[T | Exception]:
    """fn(item) inside each (namespace fd, item) in order, on one fresh thread. Exceptions
    are returned, not raised, so one vanished namespace cannot spoil the others."""
    def run() -> list[T | Exception]:
        results: list[T | Exception] = []
        for fd, item in items:
            try:
                setns(fd)
                results.append(fn(item))
            except Exception as err:
                results.append(err)
        return results
    return on_thread(run, "bridgescope-netns-hop")
