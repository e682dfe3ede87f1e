"""Does a rule match a packet? Yes, no, or "cannot tell" (None).

One matcher for every backend and every reader: the NAT interpretation asks it about a
synthetic first packet whose in-interface and source are unknown, the packet path about a
packet it knows entirely. What the packet leaves unknown, or a match this module does not
understand (an opaque nft expression, a named set), answers None; the evaluator then
follows both ways and keeps the answer only if they agree. Pure.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import merge

from bridgescope.collector.model import Rule
from bridgescope.collector.rules.model import ALIASES, address_number, port_in, span, spellings

_ALWAYS = frozenset({"-m", "--comment", "vmap"})  # vmap keys are judged per element
_LAST = {4: (1 << 32) - 1, 6: (1 << 128) - 1}  # the last address: 0.0.0.0/0 spans 0.._LAST[4]
_PROTOCOLS = {"6": "tcp", "17": "udp", "132": "sctp", "1": "icmp", "58": "ipv6-icmp"}


@dataclass(frozen=True)
class Packet:
    """A packet as the rules see it at one hook. None (or empty) means "not known"."""
    family: int
    proto: str | None
    dst: str | None
    dport: int | None
    src: str | None = None
    sport: int | None = None
    iif: str | None = None  # "" when there is none (a packet made here)
    oif: str | None = None  # "" when there is none yet (before routing)
    not_iif: frozenset[str] = frozenset()  # names the unknown in-interface is certainly not
    not_oif: frozenset[str] = frozenset()
    src_remote: bool = False  # the unknown source is on none of dst's networks
    local: frozenset[str] | None = None  # the namespace's own addresses, for addrtype LOCAL
    bridges: frozenset[str] = frozenset()  # the namespace's bridges (Docker's bridge ipset)
    ctstate: frozenset[str] = frozenset({"NEW"})
    ctmark: int = 0
    mark: int = 0


def matches(rule: Rule, packet: Packet) -> bool | None:
    """True when every match of rule holds, False when one fails, None when unsure."""
    result: bool | None = True
    for opt, args, negated in rule.matches:
        one = match(opt, args, packet)
        if one is not None and negated:
            one = not one
        if one is False:
            return False
        if one is None:
            result = None
    return result


# -- which rules of a chain can match a packet at all ---------------------------------------

# (rules without a one-address `-d`, {(IP version, address): rules with that one}), as indexes
DstIndex = tuple[list[int], dict[tuple[int, int], list[int]]]
_DEST = spellings("-d")


def dst_index(rules: Sequence[Rule]) -> DstIndex:
    """Index a chain by the one address a rule's plain `-d` names (`-d 172.17.0.2/32`, one
    per published port in Docker's filter chains): `matches` answers False for such a rule
    and any other destination, so a packet need not be shown the others at all."""
    others: list[int] = []
    by_address: dict[tuple[int, int], list[int]] = {}
    for index, rule in enumerate(rules):
        only = _one_destination(rule)
        if only is None:
            others.append(index)
        else:
            by_address.setdefault(only, []).append(index)
    return others, by_address


def _one_destination(rule: Rule) -> tuple[int, int] | None:
    for opt, args, negated in rule.matches:
        if opt in _DEST and args and not negated and "," not in args[0]:
            net = span(args[0])
            if net is not None and net[1] == net[2]:
                return net[0], net[1]
    return None


def may_match(index: DstIndex, count: int, packet: Packet, start: int) -> Sequence[int]:
    """Indexes (from start, ascending) of a chain's rules that `matches` may not reject for
    packet by its destination alone; the others certainly fail (see `_contains`)."""
    others, by_address = index
    if packet.dst is None:
        return range(start, count)  # `-d` is undecidable: every rule may match
    number = address_number(packet.dst)
    same = by_address.get(number) if number is not None and number[0] == packet.family else None
    order = others if not same else same if not others else list(merge(others, same))
    return order[bisect_left(order, start):]


def match(opt: str, args: tuple[str, ...], packet: Packet) -> bool | None:
    """One match, not negated."""
    opt = ALIASES.get(opt, opt)
    value = args[0] if args else ""
    if opt in _ALWAYS:
        return True
    if opt == "-d":
        return _in_networks(packet.dst, value, packet.family)
    if opt == "-s":
        return _source(value, packet)
    if opt == "-p":
        proto = _PROTOCOLS.get(value, value)
        if proto in ("all", "0"):
            return True
        return None if packet.proto is None else proto == packet.proto
    if opt == "--dport":
        return None if packet.dport is None else port_in(packet.dport, value)
    if opt == "--sport":
        return None if packet.sport is None else port_in(packet.sport, value)
    if opt == "--ports":  # multiport: either port
        hit = None if packet.dport is None else port_in(packet.dport, value)
        return True if hit else (None if packet.sport is None or hit is None
                                 else port_in(packet.sport, value))
    if opt in ("-i", "-o"):
        return interface(opt, value, packet)
    if opt in ("--dst-type", "--src-type"):
        return _local(packet.dst if opt == "--dst-type" else packet.src, value, packet)
    if opt == "--ctstate":
        return bool({s.strip().upper() for s in value.split(",")} & packet.ctstate)
    if opt == "--ctmark":
        return _masked(value, packet.ctmark)
    if opt == "--mark":
        return _masked(value, packet.mark)
    if opt == "--match-set" and value.startswith("docker-ext-bridges") and args[-1] == "dst":
        # Docker 28.0's set of its bridges' subnets: the packet leaves by one of them
        return None if packet.oif is None else packet.oif in packet.bridges
    return None


def interface(opt: str, pattern: str, packet: Packet) -> bool | None:
    """`-i`/`-o` (or a verdict map's key) against the packet's interface; `br+` is a prefix."""
    name = packet.iif if opt == "-i" else packet.oif
    if name is None:
        return False if pattern in (packet.not_iif if opt == "-i" else packet.not_oif) else None
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _in_networks(addr: str | None, value: str, family: int) -> bool | None:
    """addr in the network (or in one of an nft set's networks); None when unreadable."""
    if addr is None:
        return None
    if "," not in value:
        return _contains(value, addr, family)
    found: bool | None = False
    for part in value.split(","):
        hit = _contains(part.strip(), addr, family)
        if hit is None:
            return None
        found = found or hit
    return found


def _source(value: str, packet: Packet) -> bool | None:
    if packet.src is not None:
        return _in_networks(packet.src, value, packet.family)
    net = span(value)
    if net is not None and net[0] == packet.family and net[1] == 0 and net[2] == _LAST[net[0]]:
        return True  # -s 0.0.0.0/0
    if packet.src_remote and packet.dst is not None and _contains(value, packet.dst, packet.family):
        return False  # the client is outside: certainly not in the destination's own subnet
    return None


def _contains(cidr: str, addr: str, family: int) -> bool | None:
    """addr in cidr (False for the other IP version); None when cidr is not a network."""
    net, number = span(cidr), address_number(addr)
    if net is None:
        return None
    if number is None or net[0] != family or number[0] != family:
        return False
    return net[1] <= number[1] <= net[2]


def _local(addr: str | None, value: str, packet: Packet) -> bool | None:
    if value != "LOCAL" or addr is None or packet.local is None:
        return None
    return addr in packet.local


def _masked(value: str, mark: int) -> bool | None:
    want, _, mask = value.partition("/")
    try:
        want_bits, mask_bits = int(want, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        return None
    return mark & mask_bits == want_bits
