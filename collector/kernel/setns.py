"""Entering network namespaces from Python 3.11 (no os.setns): one thread at a time.

setns(2) moves only the calling thread, so everything here is about the current thread;
callers that must not leave their namespace use a dedicated thread (see netlink.hop_each).
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at path (for good)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
    except OSError as err:
        raise OSError(err.errno, f"cannot enter network namespace {path}: {err.strerror}") from None
    finally:
        os.close(fd)


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
