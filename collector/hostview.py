"""The host's container wiring as the doctor and the packet path see it.

A snapshot lists every namespace on the machine (including ones that have nothing to do
with the host being examined). "A container" here means a namespace plugged into a bridge
of the host namespace through a veth pair - the shape Docker, CNI, Podman and bridgescope all
build - so findings stay about the host and its containers, never about unrelated namespaces.
Pure functions over a Snapshot; nothing here touches the kernel.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from bridgescope.collector import shell
from bridgescope.collector.firewall.owners import BRIDGESCOPE_TAG
from bridgescope.collector.model import Interface, Namespace, Route, Rule, Snapshot
from bridgescope.collector.rules.model import RuleSet


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

    # Indexes, built once per view: the checks ask them once per forward or rule.
    @cached_property
    def _owners(self) -> dict[IPv4Address, Interface]:
        out: dict[IPv4Address, Interface] = {}
        for iface in self.snap.interfaces:
            for addr in ipv4_addresses(iface):
                out.setdefault(addr.ip, iface)
        return out

    @cached_property
    def _attached(self) -> dict[IPv4Address, Attachment]:
        return {a.ip: att for att in self.attachments() for a in ipv4_addresses(att.inner)}

    @cached_property
    def _rules(self) -> dict[tuple[str, str, str], Rule]:
        out: dict[tuple[str, str, str], Rule] = {}
        for r in self.snap.rules:
            out.setdefault((r.netns, r.chain, r.text), r)
        return out

    @cached_property
    def ruleset(self) -> RuleSet:
        """Every rule and chain, for running packets through them (rules/evaluator.py)."""
        return RuleSet(self.snap.rules, self.snap.chains)

    def uplink(self) -> str | None:
        """The name of the host's way out: the device of its IPv4 default route."""
        host_id = self.host.id if self.host else ""
        # one pass over the routes: grouping every namespace's would cost the live view each round
        return next((r.dev for r in self.snap.routes if r.netns == host_id and r.family == 4 and is_default(r)), None)

    def rule(self, netns: str, chain: str | None, text: str | None) -> Rule | None:
        """The parsed rule behind an interpreted forward or masquerade."""
        if chain is not None:
            return self._rules.get((netns, chain, text or ""))
        return next((r for r in self.snap.rules if r.netns == netns and r.text == text), None)

    def attachment_with(self, addr: IPv4Address) -> Attachment | None:
        """The container attachment whose inner interface has addr."""
        return self._attached.get(addr)

    def containers(self) -> tuple[Namespace, ...]:
        seen: dict[str, Namespace] = {}
        for net in self.bridges:
            for att in net.attachments:
                seen.setdefault(att.namespace.id, att.namespace)
        return tuple(seen.values())

    @cached_property
    def _all_attachments(self) -> tuple[Attachment, ...]:
        return tuple(a for net in self.bridges for a in net.attachments)

    def attachments(self) -> tuple[Attachment, ...]:
        return self._all_attachments

    @cached_property
    def _by_namespace(self) -> dict[str, tuple[list[Attachment], list[Interface], list[Route]]]:
        out: dict[str, tuple[list, list, list]] = {}
        for att in self.attachments():
            out.setdefault(att.namespace.id, ([], [], []))[0].append(att)
        for iface in self.snap.interfaces:
            out.setdefault(iface.netns, ([], [], []))[1].append(iface)
        for route in self.snap.routes:
            if route.family == 4:
                out.setdefault(route.netns, ([], [], []))[2].append(route)
        return out

    def attachment_of(self, ns_id: str) -> tuple[Attachment, ...]:
        return tuple(self._by_namespace.get(ns_id, ((), (), ()))[0])

    def interfaces_in(self, ns_id: str) -> tuple[Interface, ...]:
        return tuple(self._by_namespace.get(ns_id, ((), (), ()))[1])

    def routes4(self, ns_id: str) -> tuple[Route, ...]:
        """The namespace's IPv4 routes."""
        return tuple(self._by_namespace.get(ns_id, ((), (), ()))[2])

    def bridge_of_address(self, addr: IPv4Address) -> BridgeNet | None:
        return next((n for n in self.bridges if any(addr in net for net in n.networks())), None)

    def owner_of_address(self, addr: IPv4Address) -> Interface | None:
        """The interface (any namespace) that has addr assigned."""
        return self._owners.get(addr)


def ipv4_addresses(iface: Interface) -> tuple[IPv4Interface, ...]:
    return _parse_v4(iface.addresses)


@lru_cache(maxsize=65536)
def _parse_v4(addresses: tuple[str, ...]) -> tuple[IPv4Interface, ...]:
    """Parsing is the doctor's hot spot on big hosts; snapshots repeat the same strings."""
    out = []
    for text in addresses:
        try:
            addr = ipaddress.ip_interface(text)
        except ValueError:
            continue
        if isinstance(addr, IPv4Interface):
            out.append(addr)
    return tuple(out)


def is_default(route: Route) -> bool:
    return route.dst in ("default", "0.0.0.0/0")


def host_view(snap: Snapshot) -> HostView:
    host = snap.host_namespace()
    if host is None:
        return HostView(snap, None, ())
    by_id = {i.id: i for i in snap.interfaces}
    namespaces = {n.id: n for n in snap.namespaces}
    mine = snap.interfaces_in(host.id)
    ports: dict[str, list[Interface]] = {}  # one pass, not one per bridge: the live view plans each round
    for port in mine:
        if port.master is not None and port.peer:
            ports.setdefault(port.master, []).append(port)
    nets = []
    for bridge in mine:
        if bridge.kind != "bridge":
            continue
        atts = []
        for port in ports.get(bridge.id, ()):
            inner = by_id.get(port.peer)
            if inner is None or inner.netns == host.id:
                continue
            ns = namespaces.get(inner.netns)
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
    if ns is None or ns.is_host and name is None:
        return shell.line(argv)
    if name is not None:
        return shell.in_netns(name, argv)
    if ns.paths:
        return shell.in_nsfs(ns.paths[0], argv)
    if ns.pids:
        return shell.in_pid_netns(ns.pids[0], argv)
    return shell.line(argv)


# --- what a person calls a container ---------------------------------------------------

BRIDGESCOPE_CONTAINER_TAG = f"{BRIDGESCOPE_TAG}ctr/"


def container_label(ns: Namespace, ports: Iterable[Interface] = ()) -> str:
    """The container's name: bridgescope's (tagged on its host-side veth port), else the
    namespace's name, which the collector already took from the engine (Docker, Podman)
    when the engine named it."""
    for port in ports:
        if port.alias and port.alias.startswith(BRIDGESCOPE_CONTAINER_TAG):
            return port.alias[len(BRIDGESCOPE_CONTAINER_TAG):]
    return ns.name
