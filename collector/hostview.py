"""The host's container wiring as the doctor and the packet path see it.

A snapshot lists every namespace on the machine (including ones that have nothing to do
with the host being examined). "A container" here means a namespace plugged into a bridge
of the host namespace through a veth pair - the shape Docker, CNI, Podman and bridgescope all
build - so findings stay about the host and its containers, never about unrelated namespaces.
Pure functions over a Snapshot; nothing here touches the kernel.
"""
from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from bridgescope.collector.model import Interface, Namespace, Route, Snapshot


@dataclass(frozen=True)
class Attachment:
    """One container's link to a bridge: host-side veth port and the end inside the container."""
    bridge: Interface
    port: Interface
    inner: Interface
    namespace: Namespace


@dataclass(frozen=True)
class BridgeNet:
    bridge: Interface
    gateways: tuple[IPv4Interface, ...]  # the bridge's IPv4 addresses, with prefix
    attachments: tuple[Attachment, ...]

    def networks(self) -> tuple[IPv4Network, ...]:
        return tuple(g.network for g in self.gateways)

    def gateway_for(self, addr: IPv4Address) -> IPv4Interface | None:
        return next((g for g in self.gateways if addr in g.network), None)


@dataclass(frozen=True)
class HostView:
    snap: Snapshot
    host: Namespace | None
    bridges: tuple[BridgeNet, ...]

    def containers(self) -> tuple[Namespace, ...]:
        seen: dict[str, Namespace] = {}
        for net in self.bridges:
            for att in net.attachments:
                seen.setdefault(att.namespace.id, att.namespace)
        return tuple(seen.values())

    def attachments(self) -> tuple[Attachment, ...]:
        return tuple(a for net in self.bridges for a in net.attachments)

    def attachment_of(self, ns_id: str) -> tuple[Attachment, ...]:
        return tuple(a for a in self.attachments() if a.namespace.id == ns_id)

    def bridge_of_address(self, addr: IPv4Address) -> BridgeNet | None:
        return next((n for n in self.bridges if any(addr in net for net in n.networks())), None)

    def owner_of_address(self, addr: IPv4Address) -> Interface | None:
        """The interface (any namespace) that has addr assigned."""
        for iface in self.snap.interfaces:
            if any(a.ip == addr for a in ipv4_addresses(iface)):
                return iface
        return None


def ipv4_addresses(iface: Interface) -> tuple[IPv4Interface, ...]:
    out = []
    for text in iface.addresses:
        try:
            addr = ipaddress.ip_interface(text)
        except ValueError:
            continue
        if isinstance(addr, IPv4Interface):
            out.append(addr)
    return tuple(out)


def ipv4_routes(snap: Snapshot, ns_id: str) -> tuple[Route, ...]:
    return tuple(r for r in snap.routes if r.netns == ns_id and r.family == 4)


def is_default(route: Route) -> bool:
    return route.dst in ("default", "0.0.0.0/0")


def host_view(snap: Snapshot) -> HostView:
    host = snap.namespace(snap.host) if snap.host else snap.host_namespace()
    if host is None:
        return HostView(snap, None, ())
    by_id = {i.id: i for i in snap.interfaces}
    nets = []
    for bridge in snap.interfaces_in(host.id):
        if bridge.kind != "bridge":
            continue
        atts = []
        for port in snap.interfaces_in(host.id):
            inner = by_id.get(port.peer or "")
            if port.master != bridge.id or inner is None or inner.netns == host.id:
                continue
            ns = snap.namespace(inner.netns)
            if ns is not None:
                atts.append(Attachment(bridge, port, inner, ns))
        nets.append(BridgeNet(bridge, ipv4_addresses(bridge), tuple(atts)))
    return HostView(snap, host, tuple(nets))


# --- commands a user can paste, addressed to the right namespace -----------------------

def netns_name(ns: Namespace | None) -> str | None:
    """The `ip netns` name of ns, when it has one (a bind mount under /run/netns)."""
    for path in ns.paths if ns else ():
        for root in ("/run/netns/", "/var/run/netns/"):
            if path.startswith(root):
                return path[len(root):]
    return None


def in_ns(ns: Namespace | None, *argv: str) -> str:
    """argv as a command line that runs inside ns (plain for the root namespace)."""
    name = netns_name(ns)
    if ns is None:
        return shlex.join(argv)
    if name is not None:
        if argv and argv[0] == "ip":
            return shlex.join(("ip", "-n", name) + argv[1:])
        return shlex.join(("ip", "netns", "exec", name) + argv)
    if ns.is_host:
        return shlex.join(argv)
    if ns.paths:
        return shlex.join(("nsenter", f"--net={ns.paths[0]}") + argv)
    if ns.pids:
        return shlex.join(("nsenter", "-t", str(ns.pids[0]), "-n") + argv)
    return shlex.join(argv)
