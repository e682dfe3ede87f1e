"""Walk a namespace's iptables nat chains for one packet: which rules match, what they rewrite.

A small, honest interpreter of the matches container runtimes use (-s -d -i -o -p --dport
--dports, addrtype LOCAL, conntrack NEW, comment). A match it does not understand (a mark, a
set) never matches, so the path shows fewer rules rather than invented ones. Only the first
packet of a connection meets the nat table, so this is exactly what the kernel counts.
Native nftables tables are not interpreted. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from bridgescope.collector import rulematch
from bridgescope.collector.model import Rule

_IGNORED = {"-m", "--comment", "-j", "-g"}
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Packet:
    src: str | None
    dst: str
    proto: str
    dport: int


@dataclass(frozen=True)
class Context:
    iif: str | None  # interface names as the rules see them
    oif: str | None
    local: frozenset[str]  # addresses local to the namespace (for addrtype LOCAL)


@dataclass(frozen=True)
class Verdict:
    packet: Packet
    matched: tuple[Rule, ...]  # every rule that matched, jumps included, in order
    rewrite: Rule | None  # the DNAT/SNAT/MASQUERADE that changed the packet, if any


def run_chain(rules: tuple[Rule, ...], chain: str, pkt: Packet, ctx: Context,
              masquerade_source: str | None = None) -> Verdict:
    """Traverse `chain` (a built-in nat chain) of one backend's rules for pkt."""
    by_chain: dict[str, list[Rule]] = {}
    for r in sorted(rules, key=lambda r: r.position):
        by_chain.setdefault(r.chain, []).append(r)
    matched: list[Rule] = []
    result = _walk(by_chain, chain, pkt, ctx, matched, masquerade_source, 0)
    return Verdict(result[0], tuple(matched), result[1])


def _walk(by_chain, chain, pkt, ctx, matched, masq_src, depth):
    """-> (packet, rewriting rule or None, stop) ; stop = a terminal verdict was reached."""
    if depth > _MAX_DEPTH:
        return pkt, None, True
    for rule in by_chain.get(chain, ()):
        if not matches(rule, pkt, ctx):
            continue
        matched.append(rule)
        target = rule.target or ""
        if target == "RETURN":
            return pkt, None, False
        if target in ("ACCEPT", "DROP"):
            return pkt, None, True
        if target in ("DNAT", "SNAT", "MASQUERADE"):
            return _rewrite(rule, pkt, masq_src), rule, True
        if target in by_chain:
            new, rw, stop = _walk(by_chain, target, pkt, ctx, matched, masq_src, depth + 1)
            if stop or rule.goto:
                return new, rw, True
    return pkt, None, False


def _rewrite(rule: Rule, pkt: Packet, masq_src: str | None) -> Packet:
    if rule.target == "DNAT":
        dest = rulematch.dnat_destination(rule)
        if dest is None:
            return pkt
        return replace(pkt, dst=str(dest[0]), dport=dest[1] or pkt.dport)
    if rule.target == "SNAT":
        to = (rulematch.target_arg(rule, "--to-source") or "").split(":")[0]
        return replace(pkt, src=to or pkt.src)
    return replace(pkt, src=masq_src or pkt.src)


def matches(rule: Rule, pkt: Packet, ctx: Context) -> bool:
    for opt, args, neg in rule.matches:
        if opt in _IGNORED:
            continue
        ok = _one(opt, args, pkt, ctx)
        if ok is None or ok == neg:
            return False
    return True


def _one(opt: str, args: tuple[str, ...], pkt: Packet, ctx: Context) -> bool | None:
    """Does this single match hold? None = a match this interpreter does not know."""
    value = args[0] if args else ""
    if opt in ("-s", "--source"):
        return pkt.src is not None and _in(pkt.src, value)
    if opt in ("-d", "--destination"):
        return _in(pkt.dst, value)
    if opt in ("-i", "--in-interface"):
        return ctx.iif is not None and _iface(ctx.iif, value)
    if opt in ("-o", "--out-interface"):
        return ctx.oif is not None and _iface(ctx.oif, value)
    if opt in ("-p", "--protocol"):
        return value == pkt.proto
    if opt in ("--dport", "--destination-port", "--dports"):
        return any(_port_in(pkt.dport, part) for part in value.split(","))
    if opt == "--dst-type":
        return value == "LOCAL" and pkt.dst in ctx.local
    if opt == "--src-type":
        return value == "LOCAL" and pkt.src in ctx.local
    if opt in ("--ctstate", "--state"):
        return "NEW" in value.split(",")
    return None


def _in(addr: str, cidr: str) -> bool:
    try:
        return IPv4Address(addr) in IPv4Network(cidr, strict=False)
    except ValueError:
        return False


def _iface(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _port_in(port: int, spec: str) -> bool:
    low, _, high = spec.partition(":")
    try:
        return int(low) <= port <= int(high or low)
    except ValueError:
        return False
