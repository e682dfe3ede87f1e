"""The one rule model of every backend, and how its values read.

iptables-legacy, iptables-nft and native nftables rules all arrive as `collector.model.Rule`
with their matches in the iptables vocabulary (firewall/nftjson.py translates nft
expressions: an nft port set `{ 8000-8009, 9000 }` becomes `--dports 8000-8009,9000`). Here,
once for every reader of rules: option aliases folded to one name, the value parsers (ports,
addresses, DNAT destinations), a rule set grouped per table with the base chains of each
hook in the kernel's priority order, Pure.
"""
from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import groupby
from operator import attrgetter

from bridgescope.collector.model import Chain, Rule

Match = tuple[str, tuple[str, ...], bool]  # (option, args, negated)
GroupKey = tuple[str, str, int, str]  # netns, backend, family, table
MAX_DEPTH = 32  # jump nesting; real rule sets stay below 6, loops are cut anyway

# The verdicts and rewrites a target can name; anything else declared is a chain.
NOT_CHAINS = frozenset({"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE",
                        "REDIRECT", "MARK", "CONNMARK", "LOG", "VMAP", "CONTINUE"})
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT"})

ALIASES = {
    "--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
    "--in-interface": "-i", "--out-interface": "-o", "--protocol": "-p", "--match": "-m",
    "--destination-port": "--dport", "--dports": "--dport", "--destination-ports": "--dport",
    "--source-port": "--sport", "--sports": "--sport", "--source-ports": "--sport",
    "--state": "--ctstate",
}

# Where the kernel hooks each iptables table (the NF_IP_PRI_* values); iptables-legacy and
# iptables-nft register at the same ones. Native nftables chains carry their own.
_TABLE_PRIORITY = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}
_NAT_PRIORITY = {"prerouting": -100, "output": -100, "input": 100, "postrouting": 100}
_PLACE = attrgetter("netns", "backend", "family", "table", "chain")


def nft_family(family: int) -> str:
    """The nft family word of a table: the readers fold inet (and the rarer ones) to 0."""
    return {4: "ip", 6: "ip6"}.get(family, "inet")


def canonical(option: str) -> str:
    """One name per option: `--destination-ports` and `--dports` are `--dport`."""
    return ALIASES.get(option, option)


@cache
def spellings(option: str) -> frozenset[str]:
    """Every name whose canonical name is option: a hot loop asks `opt in spellings(...)`
    rather than calling canonical for each match of each rule."""
    return frozenset(name for name in (*ALIASES, option) if canonical(name) == option)


# -- values ------------------------------------------------------------------------------

def port_range(text: str) -> tuple[int, int | None] | None:
    """`80`, `8000:8009` or `8000-8009` -> (first, last or None); None when not numbers."""
    lo, _, hi = text.replace("-", ":").partition(":")
    if not (lo.isdecimal() and lo.isascii() and (not hi or (hi.isdecimal() and hi.isascii()))):
        return None
    return int(lo), int(hi) if hi else None


def port_spans(text: str) -> tuple[tuple[int, int | None] | None, ...]:
    """A port match's value, `8000-8009,9000` or `80,443:450`, as spans (None: unreadable)."""
    if text.isdecimal() and text.isascii():  # one port, as most matches name: no split
        return ((int(text), None),)
    return _port_list(text)


@lru_cache(maxsize=4096)
def _port_list(text: str) -> tuple[tuple[int, int | None] | None, ...]:
    return tuple(port_range(part.strip()) for part in text.split(","))


def port_in(port: int, text: str) -> bool | None:
    """Is port one of the ports of a match's value? None when the value does not read."""
    spans = port_spans(text)
    if None in spans:
        return None
    return any(lo <= port <= (hi if hi is not None else lo) for lo, hi in spans)


@lru_cache(maxsize=65536)
def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@lru_cache(maxsize=65536)
def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def span(text: str) -> tuple[int, int, int] | None:
    """A network as (IP version, first address, last address) as integers: the matcher's hot
    path compares integers instead of building ipaddress objects per rule and packet."""
    usual = _QUAD_NET.fullmatch(text)  # `-d 172.17.0.2/32`: one per published port
    if usual is not None:
        quad, bits = usual.groups()
        number = _quad_number(quad)
        host = (1 << (32 - int(bits))) - 1 if bits is not None else 0
        return 4, number & ~host, number | host
    net = network(text)
    if net is None:
        return None
    return net.version, int(net.network_address), int(net.broadcast_address)


@lru_cache(maxsize=65536)
def address_number(text: str) -> tuple[int, int] | None:
    """An address as (IP version, integer); None when it is not one."""
    if _DOTTED_QUAD.fullmatch(text):
        return 4, _quad_number(text)
    try:
        found = address(text)
    except ValueError:
        return None
    return found.version, int(found)


def _quad_number(quad: str) -> int:
    """A dotted quad (already matched) as its integer, without ipaddress's ~10 us parse."""
    a, b, c, d = quad.split(".")
    return int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
_QUAD = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_DOTTED_QUAD = re.compile(_QUAD)
# A DNAT destination as Docker and most others write it, `IP` or `IP:PORT`, in one match
_QUAD_PORT = re.compile(rf"({_QUAD})(?::([0-9]+))?")
_QUAD_NET = re.compile(rf"({_QUAD})(?:/(3[0-2]|[12]?[0-9]))?")  # `IP[/BITS]`


def canonical_ip(text: str) -> str | None:
    """The address in its usual spelling, or None. Dotted quads take a short cut: 5,000
    DNAT rules mean 10,000 distinct addresses, and ipaddress costs ~10 us each."""
    if _DOTTED_QUAD.fullmatch(text):
        return text
    try:
        return str(address(text))
    except ValueError:
        return None


def parse_destination(text: str) -> tuple[str, int | None, int | None] | None:
    """`IP[:PORT[-PORT][/BASE]]`, `[IPv6]:PORT`, `IP-IP:PORT` -> (ip, first port, last port)."""
    usual = _QUAD_PORT.fullmatch(text)  # one regex, cheaper than a cache that misses
    if usual is not None:
        ip, port = usual.groups()
        return ip, int(port) if port is not None else None, None
    return _any_destination(text)


@lru_cache(maxsize=4096)
def _any_destination(text: str) -> tuple[str, int | None, int | None] | None:
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        ports = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") > 1:
        addr, ports = text, ""
    else:
        addr, _, ports = text.partition(":")
    addr = canonical_ip(addr.split("-")[0])
    if addr is None:
        return None
    if not ports:
        return addr, None, None
    span = port_range(ports.split("/")[0])
    return None if span is None else (addr, *span)


def host_text(cidr: str) -> str | None:
    """A `-d` value as a host: `192.0.2.10/32` -> `192.0.2.10`; a wider prefix stays a CIDR;
    0/0 and junk -> None."""
    usual = _QUAD_NET.fullmatch(cidr)  # most are one IPv4 address: no cache to miss
    if usual is not None and usual.group(2) in (None, "32"):
        return usual.group(1)
    return _host_network(cidr)


@lru_cache(maxsize=4096)
def _host_network(cidr: str) -> str | None:
    address, _, bits = cidr.partition("/")
    if bits in ("32", "") and canonical_ip(address) == address and "." in address:
        return address
    net = network(cidr)
    if net is None or net.prefixlen == 0:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# -- the rule set: tables, chains, base chains per hook --------------------------------------

@dataclass(frozen=True)
class Base:
    """A base chain: where packets enter a table at a hook, and at which priority."""
    key: GroupKey
    chain: Chain
    priority: int

    @property
    def is_nat(self) -> bool:
        return self.chain.hook_type == "nat"


def priority(chain: Chain) -> int:
    if chain.priority is not None:
        return chain.priority
    if chain.hook_type == "nat":
        return _NAT_PRIORITY.get(chain.hook or "", 0)
    return _TABLE_PRIORITY.get(chain.hook_type or "", 0)


class RuleSet:
    """Rules grouped per (netns, backend, family, table) and chain, in order; base chains per
    (netns, hook) in priority order."""

    def __init__(self, rules: tuple[Rule, ...], chains: tuple[Chain, ...]):
        self.rules: dict[GroupKey, dict[str, list[Rule]]] = defaultdict(lambda: defaultdict(list))
        # a listing holds each chain's rules together: one step per run, not per rule
        for (netns, backend, family, table, chain), run in groupby(rules, _PLACE):
            self.rules[(netns, backend, family, table)][chain].extend(run)
        self.declared: dict[GroupKey, set[str]] = defaultdict(set)
        self.hooks: dict[tuple[str, str], list[Base]] = defaultdict(list)
        for chain in chains:
            key = (chain.netns, chain.backend, chain.family, chain.table)
            self.declared[key].add(chain.name)
            if chain.hook:
                self.hooks[(chain.netns, chain.hook)].append(Base(key, chain, priority(chain)))
        for bases in self.hooks.values():
            bases.sort(key=lambda b: b.priority)  # stable: listing order within a priority
        # per (table, chain): what the evaluator's matcher indexed, built when first asked
        self.indexes: dict[tuple[GroupKey, str], tuple] = {}

    def chain(self, key: GroupKey, name: str) -> list[Rule]:
        return self.rules.get(key, {}).get(name, [])

    def is_chain(self, key: GroupKey, name: str | None) -> bool:
        """A declared chain, or one that holds rules (hand-built rule sets declare none)."""
        return (bool(name) and name not in NOT_CHAINS
                and (name in self.declared.get(key, ()) or name in self.rules.get(key, ())))

    def bases(self, netns: str, hook: str, family: int | None = None,
              hook_type: str | None = None) -> list[Base]:
        """The base chains at hook, lowest priority first; family 0 (inet) serves both."""
        return [b for b in self.hooks.get((netns, hook), ())
                if (family is None or b.key[2] in (family, 0))
                and (hook_type is None or b.chain.hook_type == hook_type)]

    def all_bases(self, hook: str, hook_type: str) -> Iterator[Base]:
        for (_, at), bases in self.hooks.items():
            if at == hook:
                yield from (b for b in bases if b.chain.hook_type == hook_type)

    def walk(self, key: GroupKey, chain: str, targets: frozenset[str]) -> list[tuple[Rule, tuple[Match, ...]]]:
        """Every rule reachable from chain whose target is one of targets (verdicts or
        rewrites, never chains), in the kernel's order, with the matches on the way to its
        chain (its own not included: one path serves every rule of a chain)."""
        found: list[tuple[Rule, tuple[Match, ...]]] = []
        self._walk(key, chain, targets, (), frozenset(), found)
        return found

    def _walk(self, key: GroupKey, chain: str, targets: frozenset[str], path: tuple[Match, ...],
              seen: frozenset[str], found: list[tuple[Rule, tuple[Match, ...]]]) -> None:
        if len(seen) >= MAX_DEPTH:
            return
        seen = seen | {chain}
        for rule in self.chain(key, chain):
            target = rule.target
            if target in targets:
                found.append((rule, path))
            elif target == "VMAP":
                for sub, condition in vmap_jumps(rule):
                    if self.is_chain(key, sub) and sub not in seen:
                        self._walk(key, sub, targets, path + without_vmap(rule) + (condition,), seen, found)
            elif self.is_chain(key, target) and target not in seen:
                self._walk(key, target, targets, path + rule.matches, seen, found)


def vmap_option(rule: Rule) -> str:
    """What a verdict map's keys are compared with (`-o` for `oifname vmap @m`)."""
    return next((args[0] for opt, args, _ in rule.matches if opt == "vmap" and args), "")


def vmap_jumps(rule: Rule) -> Iterator[tuple[str, Match]]:
    """Docker 29's `oifname vmap @m`: each element `"docker0" : jump X` as (X, -o docker0)."""
    option = vmap_option(rule) or "?"
    for key, verdict in rule.target_args:
        word, _, target = verdict.partition(" ")
        if word in ("jump", "goto"):
            yield target, (option, (key,), False)


def without_vmap(rule: Rule) -> tuple[Match, ...]:
    return tuple(m for m in rule.matches if m[0] != "vmap")
