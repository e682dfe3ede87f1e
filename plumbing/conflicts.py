"""Is a host port free? Already forwarded (by us, Docker, CNI, Podman...) or listened on.

The reads are at the edge (the host's firewall through the collector's scan/interpret, and
/proc/thread-self/net sockets inside the host namespace); deciding is a pure function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from bridgescope.collector import firewall as firewall_reader
from bridgescope.collector import nat
from bridgescope.collector.model import PortForward
from bridgescope.plumbing import netns
from bridgescope.plumbing.state import Forward
from bridgescope.plumbing.validate import PortMapping

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


@dataclass(frozen=True)
class Listener:
    proto: str
    ip: str  # "0.0.0.0", "::" or an address
    port: int


def _overlaps(ip_a: str | None, ip_b: str | None) -> bool:
    """Two bindings collide when either is 'any address' or both name the same address."""
    return ip_a is None or ip_b is None or ip_a == ip_b


def find_conflict(m: PortMapping, ours: Iterable[Forward], foreign: Iterable[PortForward],
                  listeners: Iterable[Listener]) -> str | None:
    for f in ours:
        if f.proto == m.proto and f.host_port == m.host_port and _overlaps(f.host_ip, m.host_ip):
            return (f"host port {m.host_port}/{m.proto} is already forwarded to container "
                    f"{f.container} port {f.container_port} by bridgescope")
    for pf in foreign:
        end = pf.host_port_end or pf.host_port
        if pf.proto == m.proto and pf.host_port <= m.host_port <= end and \
                _overlaps(pf.host_ip, m.host_ip) and pf.owner != "bridgescope":
            return (f"host port {m.host_port}/{m.proto} is already forwarded to "
                    f"{pf.to_ip}:{pf.to_port} by {pf.owner}")
    for ls in listeners:
        any_ip = ls.ip in ("0.0.0.0", "::")
        if ls.proto == m.proto and ls.port == m.host_port and \
                (any_ip or m.host_ip is None or ls.ip == m.host_ip):
            return (f"host port {m.host_port}/{m.proto} is already in use by a program "
                    f"listening on {ls.ip}:{ls.port} in the host namespace")
    return None


def _hex_ip(text: str) -> str:
    if len(text) == 8:
        return ".".join(str(int(text[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "::" if set(text) == {"0"} else "ipv6"


def parse_sockets(text: str, proto: str) -> list[Listener]:
    """Lines of /proc/net/{tcp,udp}[6] -> the sockets that hold a port for incoming traffic."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        ip_hex, port_hex = fields[1].rsplit(":", 1)
        wanted = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
        if fields[3] == wanted:
            out.append(Listener(proto, _hex_ip(ip_hex), int(port_hex, 16)))
    return out


def listeners(path: str) -> list[Listener]:
    out = []
    for proto in ("tcp", "udp"):
        for leaf in (proto, proto + "6"):
            try:
                out += parse_sockets(netns.thread_proc_net(path, leaf), proto)
            except FileNotFoundError:
                continue
    return out


def foreign_forwards(ns_id: str, path: str) -> tuple[PortForward, ...]:
    """Port forwards in the host namespace's firewall that some other tool made."""
    fw = firewall_reader.scan({ns_id: path})
    view = nat.interpret(fw.rules, fw.chains, (), ())
    return tuple(pf for pf in view.port_forwards if pf.owner != "bridgescope")
