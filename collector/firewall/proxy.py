"""Docker's userland proxy: each `docker-proxy` process is a published port too.

Docker runs one per binding (`docker-proxy -proto tcp -host-ip H -host-port P
-container-ip C -container-port Q`); it serves what the DNAT rules skip, such as
127.0.0.1:P from the host itself. Read from /proc/*/comm and cmdline; the namespace is
that of the process (normally the host).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from bridgescope.collector.kernel.procfs import read_small
from bridgescope.collector.model import PortForward

_FLAGS = {"-proto": "proto", "-host-ip": "host_ip", "-host-port": "host_port",
          "-container-ip": "to_ip", "-container-port": "to_port"}


def listeners(namespaces: Mapping[str, str]) -> tuple[PortForward, ...]:
    """docker-proxy processes whose network namespace is one of `namespaces`."""
    by_inode = _inodes(namespaces)
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        # comm first: it lives in the task, while reading cmdline touches the process's
        # memory and can wait on a busy process; docker-proxy's comm is its file name.
        if _comm(pid) != "docker-proxy":
            continue
        argv = _cmdline(pid)
        if not argv or os.path.basename(argv[0]) != "docker-proxy":
            continue
        ns_id = by_inode.get(_net_inode(pid))
        forward = from_argv(argv, ns_id) if ns_id else None
        if forward:
            found.append(forward)
    return tuple(sorted(found, key=lambda f: (f.netns, f.proto, f.host_port)))


def from_argv(argv: list[str], netns: str) -> PortForward | None:
    """A docker-proxy command line -> a forward (None when the flags are incomplete)."""
    values = {}
    for flag, value in zip(argv, argv[1:]):
        if flag in _FLAGS:
            values[_FLAGS[flag]] = value
    try:
        host_port, to_port = int(values["host_port"]), int(values["to_port"])
        to_ip = values["to_ip"]
    except (KeyError, ValueError):
        return None
    host_ip = values.get("host_ip")
    return PortForward(netns=netns, proto=values.get("proto", "tcp"),
                       host_ip=None if host_ip in (None, "0.0.0.0", "::") else host_ip,
                       host_port=host_port, to_ip=to_ip, to_port=to_port, owner="docker",
                       backend="proxy", via="proxy", rule_text=" ".join(argv))


def _inodes(namespaces: Mapping[str, str]) -> dict[int, str]:
    out = {}
    for ns_id, path in namespaces.items():
        try:
            out[os.stat(path).st_ino] = ns_id
        except OSError:
            continue
    return out


def _comm(pid: str) -> str:
    try:
        return read_small(f"/proc/{pid}/comm").strip()
    except OSError:
        return ""


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:  # the process ended, or is not ours to read
        return []


def _net_inode(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
