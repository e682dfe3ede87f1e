"""Send one real probe through the lab and see which rule counters moved.

Only ever between lab namespaces: the destination must be an address some namespace of the
lab owns (the caller passes the lab's namespace-name prefix). A TCP connect from a thread
that joined the source namespace; the nat table only sees a connection's first packet, so
the nat counters that move are exactly the rules that packet matched.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from bridgescope.collector.hostview import ipv4_addresses
from bridgescope.collector.kernel.namespaces import discover, resolve_netns
from bridgescope.collector.kernel.snapshot import scan
from bridgescope.collector.model import Rule, Snapshot
from bridgescope.collector.packetpath import moved_rules, namespace_paths
from bridgescope.plumbing import netns
from bridgescope.plumbing.errors import ValidationError

TIMEOUT = 2.0


@dataclass(frozen=True)
class ProbeResult:
    connected: bool
    reply: str  # what the server said (the lab's servers echo the peer address), or the error
    moved: tuple[tuple[Rule, int], ...]  # nat rules whose packet counters went up, with the delta


def lab_address(snap: Snapshot, addr: str, prefix: str) -> bool:
    """Is addr assigned to an interface in a namespace whose name starts with prefix?"""
    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        return False
    lab = {n.id for n in snap.namespaces if n.name.startswith(prefix)}
    return any(a.ip == ip for i in snap.interfaces if i.netns in lab for a in ipv4_addresses(i))


def lab_snapshot(host: str, prefix: str) -> Snapshot:
    """A snapshot of the lab's namespaces only (a busy machine may have hundreds of others)."""
    return scan([n for n in discover(resolve_netns(host)) if n.name.startswith(prefix)])


def send(host: str, source: str, dst: str, port: int, *, prefix: str) -> ProbeResult:
    """Connect from namespace `source` (id) to dst:port; host = the lab's host namespace name."""
    before = lab_snapshot(host, prefix)
    src_ns = before.namespace(source)
    if src_ns is None or not src_ns.name.startswith(prefix):
        raise ValidationError("source", f"{source} is not a namespace of the lab {prefix!r}")
    if not lab_address(before, dst, prefix):
        raise ValidationError("destination", f"{dst} is not an address inside the lab {prefix!r}; "
                              "probes never leave the lab")
    if not 0 < port < 65536:
        raise ValidationError("port", f"port {port} is not between 1 and 65535")
    path = namespace_paths(before)[source]
    connected, reply = netns.run_in(path, lambda: _connect(dst, port))
    return ProbeResult(connected, reply, moved_rules(before, lab_snapshot(host, prefix)))


def outcome(result: ProbeResult) -> str:
    """The probe's verdict in the words the reachability verdicts use."""
    if result.connected:
        return "reachable"
    return "refused" if "refused" in result.reply.lower() else (
        "timeout" if "timed out" in result.reply.lower() else "unknown")


def _connect(dst: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((dst, port), timeout=TIMEOUT) as conn:
            conn.sendall(f"GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode())
            data = b""
            while len(data) < 65536 and (chunk := conn.recv(4096)):
                data += chunk
        return True, data.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip()[:200]
    except OSError as err:
        return False, err.strerror or str(err)
