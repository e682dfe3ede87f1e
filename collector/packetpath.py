"""The packet path: where a connection from a source namespace to an address and port goes.

Hop by hop: in each namespace the base chains of every backend (iptables-legacy, iptables-nft,
native nftables) at the packet's first hook (output for a packet made here, prerouting for
one that arrived) may drop it or rewrite its destination; the kernel's own route lookup
(RTM_GETROUTE, asked through `lookup`) picks the way out; the input or forward hook may drop
it; postrouting may rewrite its source; then the veth pair or the bridge carries it to the
next namespace. Every hook is run by the shared evaluator (rules/evaluator.py). The result names
graph element ids (namespaces, interfaces, port forwards, masquerades) plus a step list in
plain words. `trace` is pure given a snapshot and a lookup function; `trace_live` wires in
the kernel.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from bridgescope.collector.errors import NamespaceNotFound
from bridgescope.collector.hostview import ipv4_addresses
from bridgescope.collector.kernel import listeners as kernel_listeners
from bridgescope.collector.kernel.listeners import ListenerRead
from bridgescope.collector.kernel.namespaces import open_path
from bridgescope.collector.kernel.routelookup import RouteAnswer, RouteLookup
from bridgescope.collector.model import (
    Interface,
    Namespace,
    Rule,
    Snapshot,
    interface_id,
    masquerade_id,
    portforward_id,
)
from bridgescope.collector.rules.evaluator import DROP, ChainRun, describe, run_hook
from bridgescope.collector.rules.matcher import Packet
from bridgescope.collector.rules.model import Base, RuleSet
from bridgescope.collector.rules.reach import listens

Lookup = Callable[..., RouteAnswer]  # (ns_id, dst, *, src=None, iif=None) -> RouteAnswer
MAX_HOPS = 8


@dataclass(frozen=True)
class Endpoints:
    """A packet as the path shows it."""
    src: str | None
    dst: str
    proto: str
    dport: int


def endpoints(packet: Packet) -> Endpoints:
    return Endpoints(packet.src, packet.dst or "", packet.proto or "", packet.dport or 0)


@dataclass(frozen=True)
class PathStep:
    kind: str  # "nat", "route", "veth", "bridge", "deliver", "refused", "drop", "unknown"
    netns: str
    text: str
    elements: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()  # the nat rules that matched here (jumps included)
    verdict_rule: Rule | None = None  # for a drop: the rule that dropped (None: a policy)


@dataclass(frozen=True)
class PacketPath:
    source: str  # namespace id
    packet: Endpoints  # as sent
    steps: tuple[PathStep, ...]
    delivered_to: str | None  # namespace id where the packet ends up locally, or None
    final: Endpoints  # after every rewrite

    @property
    def outcome(self) -> tuple[str, str]:
        """(reachable | refused | timeout | unknown, the reason in words): the last step's."""
        last = self.steps[-1] if self.steps else None
        if last is None:
            return "unknown", "no step"
        if last.kind == "deliver":
            return ("unknown", last.text) if "not known" in last.text else ("reachable", "")
        return {"refused": "refused", "drop": "timeout"}.get(last.kind, "unknown"), last.text

    @property
    def elements(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for step in self.steps:
            for e in step.elements:
                seen.setdefault(e, None)
        return tuple(seen)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for s in self.steps for r in s.rules)


def trace(snap: Snapshot, source: str, dst: str, port: int, lookup: Lookup,
          proto: str = "tcp", listeners: ListenerRead | None = None) -> PacketPath:
    """listeners: the sockets of the namespaces the packet may end in (None: not read; a
    delivered packet then says it does not know whether anything answers)."""
    first = lookup(source, dst)  # the kernel picks a local packet's source before nat OUTPUT
    pkt = Packet(4, proto, dst, port, src=first.prefsrc)
    sent, steps = pkt, []
    tables = RuleSet(snap.rules, snap.chains)
    ns_id, iif, in_port = source, None, None
    for _ in range(MAX_HOPS):
        pkt, hop, nxt = _hop(snap, tables, ns_id, iif, in_port, pkt, lookup, listeners)
        steps += hop
        if nxt is None:
            break
        ns_id, iif, in_port = nxt
    else:
        steps.append(PathStep("drop", ns_id, f"gave up after {MAX_HOPS} hops (a routing loop?)"))
    delivered = steps[-1].netns if steps and steps[-1].kind == "deliver" else None
    return PacketPath(source, endpoints(sent), tuple(steps), delivered, endpoints(pkt))


Arrival = tuple[str, Interface, Interface | None]  # namespace id, in-interface, bridge port


def _hop(snap: Snapshot, tables: RuleSet, ns_id: str, iif: Interface | None,
         in_port: Interface | None, pkt: Packet, lookup: Lookup,
         listeners: ListenerRead | None = None) -> tuple[Packet, list[PathStep], Arrival | None]:
    """One namespace: the first hook, route, input or forward, postrouting, and where next."""
    steps: list[PathStep] = []
    ns_name = snap.ns_name(ns_id)
    pkt = replace(pkt, iif=iif.name if iif else "", oif="" if iif else _out_name(snap, ns_id, pkt, lookup),
                  local=_local_addresses(snap, ns_id), ctstate=frozenset({"NEW"}))
    pkt, ended = _hook(snap, tables, ns_id, "output" if iif is None else "prerouting", pkt, steps)
    if ended:
        return pkt, steps, None
    ans = lookup(ns_id, pkt.dst, src=pkt.src, iif=iif.ifindex if iif else None)
    if ans.type == "local":
        if iif is not None:
            pkt, ended = _hook(snap, tables, ns_id, "input", replace(pkt, oif=""), steps)
            if ended:
                return pkt, steps, None
        steps.append(_arrival(ns_id, ns_name, pkt, listens(listeners, ns_id, pkt.proto or "tcp",
                                                          pkt.dst, pkt.dport or 0)))
        return pkt, steps, None
    if ans.type != "unicast" or ans.oif is None:
        why = ans.error or f"a {ans.type} route"
        steps.append(PathStep("drop", ns_id, f"{ns_name} has no way to {pkt.dst}: {why}", (ns_id,)))
        return pkt, steps, None
    oif = _iface(snap, ns_id, ans.oif)
    if pkt.src is None:
        pkt = replace(pkt, src=ans.prefsrc or _first_address(oif))
    via = f" via {ans.gateway}" if ans.gateway else ""
    steps.append(PathStep("route", ns_id, f"route lookup in {ns_name}: {pkt.dst}{via} dev {oif.name}",
                      (ns_id, oif.id)))
    pkt = replace(pkt, oif=oif.name)
    if iif is not None:
        pkt, ended = _hook(snap, tables, ns_id, "forward", pkt, steps)
        if ended:
            return pkt, steps, None
    # MASQUERADE takes the out-interface's address
    pkt, ended = _hook(snap, tables, ns_id, "postrouting", pkt, steps, _first_address(oif))
    if ended:
        return pkt, steps, None
    nxt = _next(snap, oif, IPv4Address(ans.gateway or pkt.dst), steps, in_port)
    return pkt, steps, nxt


def _arrival(ns_id: str, ns_name: str, pkt: Packet, listening: bool | None) -> PathStep:
    """The end of a path that arrived: answered, refused, or not known (sockets not read)."""
    port = f"{pkt.proto}/{pkt.dport}"
    if listening is False:
        return PathStep("refused", ns_id, f"refused: nothing listens on {port} in {ns_name}", (ns_id,))
    if listening is None:
        return PathStep("deliver", ns_id, f"{pkt.dst} is local in {ns_name}: whether a program listens "
                    f"on {port} is not known", (ns_id,))
    return PathStep("deliver", ns_id, f"{pkt.dst} is local in {ns_name}: delivered to the program "
                f"listening on {port}", (ns_id,))


def _out_name(snap: Snapshot, ns_id: str, pkt: Packet, lookup: Lookup) -> str | None:
    """A packet made here was routed before the output hook: its out-interface is known."""
    ans = lookup(ns_id, pkt.dst, src=pkt.src)
    return _iface(snap, ns_id, ans.oif).name if ans.type == "unicast" and ans.oif else None


def _hook(snap: Snapshot, tables: RuleSet, ns_id: str, hook: str, pkt: Packet,
          steps: list[PathStep], masq_src: str | None = None) -> tuple[Packet, bool]:
    """Every base chain at hook; nat steps for the nat chains whose rules matched. -> the
    packet after the hook, and whether the path ends here (a drop or unknown step says why)."""
    run = run_hook(tables, ns_id, hook, pkt, masquerade_source=masq_src)
    for base, chain_run in run.runs:
        if base.is_nat and chain_run.matched:
            steps.append(_nat_step(snap, ns_id, base, pkt, chain_run))
    if run.verdict == DROP and run.decider is not None:
        base, rule = run.decider
        how = f"`{rule.text}`" if rule is not None else f"its policy is {base.chain.policy}"
        steps.append(PathStep("drop", ns_id, f"{hook}: {describe(base)} drops it ({how})",
                          (ns_id,), verdict_rule=rule))
        return run.packet, True
    if run.unknown:
        steps.append(PathStep("unknown", ns_id, f"{hook}: {run.unknown}", (ns_id,)))
    return run.packet, run.rewrite_unknown  # a packet whose rewrite is unknown goes nowhere known


def _nat_step(snap: Snapshot, ns_id: str, base: Base, before: Packet, run: ChainRun) -> PathStep:
    after, rw = run.packet, run.binding
    chain = base.chain.name
    elements: tuple[str, ...] = ()
    if rw is None:
        text = f"nat {chain}: {len(run.matched)} rule(s) matched, nothing rewritten"
    elif rw.target in ("DNAT", "REDIRECT"):
        text = f"nat {chain}: {rw.target} {before.dst}:{before.dport} -> {after.dst}:{after.dport}"
        elements = tuple(portforward_id(p)
                         for p in snap.port_forwards
                         if p.netns == ns_id and p.rule_text == rw.text and p.chain == rw.chain)
    else:
        text = f"nat {chain}: {rw.target} source {before.src} -> {after.src}"
        elements = tuple(_masquerade_ids(snap, ns_id, rw))
    return PathStep("nat", ns_id, f"{text}  ({rw.text if rw else run.matched[-1].text})",
                elements, run.matched)


def _masquerade_ids(snap: Snapshot, ns_id: str, rule: Rule) -> list[str]:
    return [masquerade_id(m) for m in snap.masquerades
            if m.netns == ns_id and m.rule_text == rule.text and m.chain == rule.chain]


def _next(snap: Snapshot, oif: Interface, next_hop: IPv4Address, steps: list[PathStep],
          in_port: Interface | None = None) -> Arrival | None:
    """Where a packet sent out of oif towards next_hop arrives, and through which bridge port."""
    if oif.kind == "bridge":
        port = _bridge_port_towards(snap, oif, next_hop)
        if port is None:
            steps.append(PathStep("drop", oif.netns, f"no port of {oif.name} leads to {next_hop}", (oif.id,)))
            return None
        peer = snap.interface(port.peer or "")
        text = f"{oif.name} switches the frame to port {port.name}"
        if in_port is not None and in_port.id == port.id:
            if port.hairpin is False and _bridge_netfilter(snap, oif.netns):
                # with bridge netfilter the DNAT happened on the bridge, which now must send
                # the frame back where it came from: it refuses unless hairpin mode is on
                steps.append(PathStep("drop", oif.netns, f"{oif.name} will not send the frame back out "
                                  f"of {port.name}, the port it came in on: hairpin mode is off",
                                  (oif.id, port.id)))
                return None
            mode = {True: "on", False: "off"}.get(port.hairpin, "unknown")
            text += f" - back out of the port it came in on (hairpin mode {mode})"
        steps.append(PathStep("bridge", oif.netns, text, (oif.id, port.id)))
        steps.append(PathStep("veth", peer.netns, f"veth {port.name} -> {peer.name} in "
                          f"{snap.ns_name(peer.netns)}", (port.id, peer.id, peer.netns)))
        return peer.netns, peer, None
    peer = snap.interface(oif.peer or "")
    if peer is None:
        steps.append(PathStep("drop", oif.netns, f"{oif.name} leads out of the machine", (oif.id,)))
        return None
    master = snap.interface(peer.master or "")
    if master is not None and master.kind == "bridge":
        # into a bridge port: to the bridge itself (the gateway) or straight to a neighbour
        steps.append(PathStep("veth", peer.netns, f"veth {oif.name} -> {peer.name} (port of {master.name})",
                          (oif.id, peer.id)))
        if any(a.ip == next_hop for a in ipv4_addresses(master)):
            steps.append(PathStep("bridge", master.netns, f"{master.name} hands it to "
                              f"{snap.ns_name(master.netns)} (the gateway {next_hop})",
                              (master.id, master.netns)))
            return master.netns, master, peer
        return _next(snap, master, next_hop, steps, peer)
    steps.append(PathStep("veth", peer.netns, f"veth {oif.name} -> {peer.name} in "
                      f"{snap.ns_name(peer.netns)}", (oif.id, peer.id, peer.netns)))
    return peer.netns, peer, None


def _bridge_netfilter(snap: Snapshot, ns_id: str) -> bool:
    ns = snap.namespace(ns_id)
    return ns is not None and ns.sysctl("net.bridge.bridge-nf-call-iptables") == "1"


def _bridge_port_towards(snap: Snapshot, bridge: Interface, addr: IPv4Address) -> Interface | None:
    for port in snap.interfaces_in(bridge.netns):
        peer = snap.interface(port.peer or "") if port.master == bridge.id else None
        if peer is None:
            continue
        if any(a.ip == addr for i in snap.interfaces_in(peer.netns) for a in ipv4_addresses(i)):
            return port
    return None


def _local_addresses(snap: Snapshot, ns_id: str) -> frozenset[str]:
    return frozenset(str(a.ip) for i in snap.interfaces_in(ns_id) for a in ipv4_addresses(i))


def _first_address(iface: Interface) -> str | None:
    addrs = ipv4_addresses(iface)
    return str(addrs[0].ip) if addrs else None


def _iface(snap: Snapshot, ns_id: str, ifindex: int) -> Interface:
    found = next((i for i in snap.interfaces_in(ns_id) if i.ifindex == ifindex), None)
    if found is None:
        return Interface(interface_id(ns_id, ifindex), ns_id, f"if{ifindex}", ifindex, "other", "up", 0, None)
    return found


def namespace_paths(snap: Snapshot) -> dict[str, str]:
    """Where to open each namespace (namespaces.open_path), for those that can still be."""
    out = {}
    for ns in snap.namespaces:
        try:
            out[ns.id] = open_path(ns)
        except NamespaceNotFound:
            continue
    return out


def trace_live(snap: Snapshot, source: str, dst: str, port: int, proto: str = "tcp") -> PacketPath:
    """trace() with the kernel's route lookups in each namespace and a fresh read of the
    listening sockets of every namespace of the snapshot (a lab's handful: ~0.1 ms each)."""
    paths = namespace_paths(snap)
    with RouteLookup(paths) as lookup:
        return trace(snap, source, dst, port, lookup, proto, kernel_listeners.read(paths))


def namespace_by_name(snap: Snapshot, name: str) -> Namespace | None:
    return next((n for n in snap.namespaces if n.name == name), None)


def rule_key(rule: Rule) -> tuple:
    return (rule.netns, rule.backend, rule.family, rule.table, rule.chain, rule.position, rule.text)


def moved_rules(before: Snapshot, after: Snapshot, table: str = "nat") -> tuple[tuple[Rule, int], ...]:
    """Rules of `table` whose packet counters went up between two snapshots, with the delta."""
    old = {rule_key(r): r.packets for r in before.rules if r.table == table}
    return tuple((r, r.packets - old[rule_key(r)]) for r in after.rules
                 if r.table == table and rule_key(r) in old and r.packets > old[rule_key(r)])
