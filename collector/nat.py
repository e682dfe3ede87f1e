"""NAT interpretation: pure functions from rules (+ interfaces) to forwards and masquerades.

The kernel runs a packet through the nat base chains (PREROUTING for traffic arriving,
OUTPUT for the host's own connections, POSTROUTING on the way out), following jumps. We do
the same with the rules: every DNAT reached from a prerouting/output base chain is a port
forward with the conditions collected on the way (protocol, port, host address); a DNAT no
path reaches is reported too, marked unreachable. Every MASQUERADE/SNAT reached from
postrouting is a masquerade. The FORWARD verdict for each forward is worked out by running
a synthetic first packet (external client -> container ip:port, conntrack state NEW and
DNAT) through every filter base chain on the forward hook, in every backend: an accept in
one base chain does not save a packet another one drops.

Backends and families are treated alike: nftables rules were already translated into the
iptables vocabulary by the nft JSON decoder (see firewall/nftjson.py).
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterator

from bridgescope.collector.model import Chain, Interface, Masquerade, Namespace, PortForward, Rule

Match = tuple[str, tuple[str, ...], bool]
GroupKey = tuple[str, str, int, str]  # netns, backend, family, table
MAX_DEPTH = 32  # jump nesting; real rule sets stay below 6, loops are cut by `seen` anyway
TERMINAL = frozenset({"ACCEPT", "DROP", "REJECT"})
_NEXT, _LEAVE, _FELL_OFF = "next rule", "leave chain", "fell off a user chain"  # not verdicts
_NOT_CHAINS = frozenset({"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE",
                         "REDIRECT", "MARK", "CONNMARK", "LOG", "VMAP", "CONTINUE"})


@dataclass(frozen=True)
class NatView:
    port_forwards: tuple[PortForward, ...] = ()
    masquerades: tuple[Masquerade, ...] = ()
    warnings: tuple[str, ...] = ()


def interpret(rules: tuple[Rule, ...], chains: tuple[Chain, ...],
              interfaces: tuple[Interface, ...], namespaces: tuple[Namespace, ...],
              *, proxies: tuple[PortForward, ...] = ()) -> NatView:
    """Port forwards (DNAT and docker-proxy) and masquerades, each resolved to interfaces."""
    tables = _Tables(rules, chains)
    where = _locator(interfaces)
    filters = _ForwardFilter(tables, where.bridge_names())
    forwards: list[PortForward] = []
    warnings: list[str] = []
    for rule, reach in _dnat_rules(tables):
        made, problem = forwards_of(rule, reach)
        if problem:
            warnings.append(problem)
        forwards.extend(PortForward(**_resolve(f, rule, where, filters)) for f in made)
    forwards.extend(replace(p, **_resolve(vars(p), None, where, None)) for p in proxies)
    masquerades, unreached = _masquerades(tables)
    warnings.extend(f"{r.backend} rule `{r.text}` in {r.netns} ({r.table}/{r.chain}) is never "
                    f"reached from POSTROUTING, so it masquerades nothing" for r in unreached)
    forwards.sort(key=lambda f: (f.netns, f.proto, f.host_port, f.host_ip or "", f.via, f.backend))
    return NatView(tuple(forwards), tuple(masquerades), tuple(warnings))


# -- rule graph --------------------------------------------------------------------------

class _Tables:
    """Rules grouped per (netns, backend, family, table) and chain, in order."""

    def __init__(self, rules: tuple[Rule, ...], chains: tuple[Chain, ...]):
        self.rules: dict[GroupKey, dict[str, list[Rule]]] = defaultdict(lambda: defaultdict(list))
        for rule in rules:
            self.rules[(rule.netns, rule.backend, rule.family, rule.table)][rule.chain].append(rule)
        self.declared: dict[GroupKey, set[str]] = defaultdict(set)
        self.by_hook: dict[tuple[str, str | None], list[tuple[GroupKey, Chain]]] = defaultdict(list)
        for chain in chains:
            key = (chain.netns, chain.backend, chain.family, chain.table)
            self.declared[key].add(chain.name)
            if chain.hook:
                self.by_hook[(chain.hook, chain.hook_type)].append((key, chain))

    def chain(self, key: GroupKey, name: str) -> list[Rule]:
        return self.rules.get(key, {}).get(name, [])

    def is_chain(self, key: GroupKey, name: str | None) -> bool:
        return bool(name) and name not in _NOT_CHAINS and name in self.declared.get(key, ())

    def entries(self, hook: str, hook_type: str) -> list[tuple[GroupKey, Chain]]:
        return self.by_hook.get((hook, hook_type), [])

    def walk(self, key: GroupKey, chain: str, path: tuple[Match, ...] = (),
             seen: frozenset[str] = frozenset()) -> Iterator[tuple[Rule, tuple[Match, ...]]]:
        """Every non-jump rule reachable from chain, with the matches on the way to it."""
        if len(seen) >= MAX_DEPTH:
            return
        seen = seen | {chain}
        for rule in self.chain(key, chain):
            if rule.target == "VMAP":
                for sub, condition in _vmap_jumps(rule):
                    if self.is_chain(key, sub) and sub not in seen:
                        yield from self.walk(key, sub, path + _plain(rule) + (condition,), seen)
            elif self.is_chain(key, rule.target):
                if rule.target not in seen:
                    yield from self.walk(key, rule.target, path + rule.matches, seen)
            else:
                yield rule, path + rule.matches


def _vmap_jumps(rule: Rule) -> Iterator[tuple[str, Match]]:
    """Docker 29's `oifname vmap @m`: each element `"docker0" : jump X` as (X, -o docker0)."""
    option = next((args[0] for opt, args, _ in rule.matches if opt == "vmap" and args), "?")
    for key, verdict in rule.target_args:
        word, _, target = verdict.partition(" ")
        if word in ("jump", "goto"):
            yield target, (option, (key,), False)


def _plain(rule: Rule) -> tuple[Match, ...]:
    return tuple(m for m in rule.matches if m[0] != "vmap")


# -- DNAT -> port forwards -----------------------------------------------------------------

@dataclass(frozen=True)
class _Reach:
    """How a DNAT rule is reached: path matches from prerouting and from output (or None)."""
    prerouting: tuple[Match, ...] | None = None
    output: tuple[Match, ...] | None = None


def _dnat_rules(tables: _Tables) -> list[tuple[Rule, _Reach]]:
    found: dict[int, tuple[Rule, dict[str, tuple[Match, ...]]]] = {}  # by id: Rule hashes slowly
    for hook in ("prerouting", "output"):
        for key, base in tables.entries(hook, "nat"):
            for rule, path in tables.walk(key, base.name):
                if rule.target == "DNAT":
                    found.setdefault(id(rule), (rule, {}))[1].setdefault(hook, path)
    for by_chain in tables.rules.values():  # DNATs no base chain leads to
        for chain_rules in by_chain.values():
            for rule in chain_rules:
                if rule.target == "DNAT":
                    found.setdefault(id(rule), (rule, {}))
    return [(rule, _Reach(paths.get("prerouting"), paths.get("output")))
            for rule, paths in found.values()]


def forwards_of(rule: Rule, reach: _Reach) -> tuple[list[dict], str | None]:
    """One DNAT rule (and how it is reached) -> its forwards (PortForward fields), or a
    problem in words."""
    path = reach.prerouting if reach.prerouting is not None else (
        reach.output if reach.output is not None else rule.matches)
    dest = dict(rule.target_args).get("--to-destination", "")
    parsed = parse_destination(dest)
    if parsed is None:
        return [], (f"cannot understand DNAT destination {dest!r} of `{rule.text}` in "
                    f"{rule.netns}; that forward is not shown")
    to_ip, to_lo, to_hi = parsed
    proto = last_value(rule.matches, "-p") or last_value(path, "-p") or "all"
    host_ip = _host_ip(path)
    forwards = []
    spans = _ports(rule.matches) or _ports(path) or [(0, None)]
    if None in spans:
        return [], f"cannot understand the ports of `{rule.text}` in {rule.netns}; that forward is not shown"
    for host_lo, host_hi in spans:
        forwards.append(dict(
            netns=rule.netns, proto=proto, host_ip=host_ip, host_port=host_lo,
            host_port_end=host_hi, to_ip=to_ip, to_port=to_lo if to_lo is not None else host_lo,
            to_port_end=to_hi if to_lo is not None else host_hi, owner=rule.owner,
            backend=rule.backend, reachable=reach.prerouting is not None,
            from_host=reach.output is not None and _admits(reach.output, host_ip),
            chain=rule.chain, rule_text=rule.text))
    return forwards, None


@lru_cache(maxsize=65536)
def parse_destination(text: str) -> tuple[str, int | None, int | None] | None:
    """`IP[:PORT[-PORT][/BASE]]`, `[IPv6]:PORT`, `IP-IP:PORT` -> (ip, first port, last port)."""
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        ports = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") > 1:
        address, ports = text, ""
    else:
        address, _, ports = text.partition(":")
    address = _canonical_ip(address.split("-")[0])
    if address is None:
        return None
    if not ports:
        return address, None, None
    span = _port_range(ports.split("/")[0])
    return None if span is None else (address, *span)


def _canonical_ip(text: str) -> str | None:
    """The address in its usual spelling, or None. Dotted quads take a short cut: 5,000
    DNAT rules mean 10,000 distinct addresses, and ipaddress costs ~10 us each."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdecimal() and p.isascii() and len(p) <= 3 and
                               (p == "0" or p[0] != "0") and int(p) <= 255 for p in parts):
        return text
    try:
        return str(_address(text))
    except ValueError:
        return None


def last_value(matches: tuple[Match, ...], option: str) -> str | None:
    """The innermost non-negated value of an option along a path."""
    for opt, args, negated in reversed(matches):
        if opt == option and args and not negated:
            return args[0]
    return None


def _ports(matches: tuple[Match, ...]) -> list[tuple[int, int | None] | None]:
    """Destination port spans of the innermost port match; None marks an unreadable one."""
    for opt, args, negated in reversed(matches):
        if negated or not args:
            continue
        if opt in ("--dport", "--destination-port"):
            return [_port_range(args[0])]
        if opt in ("--dports", "--destination-ports", "--ports"):
            return [_port_range(part) for part in args[0].split(",")]
    return []


def _port_range(text: str) -> tuple[int, int | None] | None:
    """`80`, `8000:8009` or `8000-8009` -> (first, last or None); None when not numbers."""
    lo, _, hi = text.replace("-", ":").partition(":")
    if not (lo.isdecimal() and lo.isascii() and (not hi or (hi.isdecimal() and hi.isascii()))):
        return None
    return int(lo), int(hi) if hi else None


def _host_ip(path: tuple[Match, ...]) -> str | None:
    for opt, args, negated in reversed(path):
        if opt in ("-d", "--destination") and args and not negated:
            host = _host_text(args[0])
            if host is not None:
                return host
    return None


@lru_cache(maxsize=65536)
def _host_text(cidr: str) -> str | None:
    """`192.0.2.10/32` -> `192.0.2.10`; a wider prefix stays a CIDR; 0/0 and junk -> None."""
    address, slash, bits = cidr.partition("/")
    if bits in ("32", "") and _canonical_ip(address) == address and "." in address:
        return address
    net = _network(cidr)
    if net is None or net.prefixlen == 0:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _admits(path: tuple[Match, ...], host_ip: str | None) -> bool:
    """Whether the host's own connection to host_ip passes the `-d` conditions of path
    (Docker's OUTPUT jump says `! -d 127.0.0.0/8`: its forwards bound to 127.0.0.1 are
    served by docker-proxy, not by the DNAT)."""
    if host_ip is None:
        return True
    address = _network(host_ip)
    for opt, args, negated in path:
        if opt in ("-d", "--destination") and args:
            net = _network(args[0])
            if net is not None and address is not None and address.version == net.version:
                if address.subnet_of(net) == negated:
                    return False
    return True


@lru_cache(maxsize=65536)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@lru_cache(maxsize=65536)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


# -- where a forward lands ------------------------------------------------------------------

_last_locator: tuple[tuple[Interface, ...], "_Locator"] | None = None


def _locator(interfaces: tuple[Interface, ...]) -> "_Locator":
    """The index of these interfaces, reused while the same tuple comes again: the Watcher
    interprets each namespace's rules against one snapshot (the index is read-only)."""
    global _last_locator
    last = _last_locator
    if last is not None and last[0] is interfaces:
        return last[1]
    where = _Locator(interfaces)
    _last_locator = (interfaces, where)
    return where


class _Locator:
    """Which interface owns an address, and which bridge port leads to it."""

    def __init__(self, interfaces: tuple[Interface, ...]):
        self.by_id = {i.id: i for i in interfaces}
        self.by_ip: dict[str, list[Interface]] = defaultdict(list)
        self.bridges: dict[str, list[Interface]] = defaultdict(list)
        for interface in interfaces:
            for cidr in interface.addresses:
                address = cidr.split("/")[0]
                self.by_ip[address].append(interface)
            if interface.kind == "bridge":
                self.bridges[interface.netns].append(interface)

    def owner(self, ip: str, netns: str) -> Interface | None:
        """The interface with ip behind a veth whose peer is in netns, else one in netns.

        Other hosts' namespaces reuse the same private addresses, so an address anywhere
        else proves nothing.
        """
        local = None
        for interface in self.by_ip.get(ip, []):
            peer = self.by_id.get(interface.peer) if interface.peer else None
            if interface.netns != netns and peer is not None and peer.netns == netns:
                return interface
            if interface.netns == netns:
                local = local or interface
        return local

    def bridge_names(self) -> dict[str, frozenset[str]]:
        return {netns: frozenset(b.name for b in found) for netns, found in self.bridges.items()}

    def bridge_to(self, ip: str, netns: str, target: Interface | None) -> str | None:
        """Name of the bridge in netns that carries traffic to ip, if we can tell."""
        peer = self.by_id.get(target.peer) if target and target.peer else None
        if peer is not None and peer.netns == netns:
            master = self.by_id.get(peer.master) if peer.master else None
            return master.name if master else peer.name
        address = ipaddress.ip_address(ip)
        for bridge in self.bridges.get(netns, []):
            for cidr in bridge.addresses:
                net = _network(cidr)
                if net is not None and net.version == address.version and address in net:
                    return bridge.name
        return None


def _resolve(forward: dict, rule: Rule | None, where: _Locator,
             filters: _ForwardFilter | None) -> dict:
    """Add where a forward lands (container, interface) and the FORWARD verdict."""
    netns, to_ip = forward["netns"], forward["to_ip"]
    target = where.owner(to_ip, netns)
    accept = None
    if filters is not None and rule is not None:
        accept = filters.accepts(forward, rule, lambda: where.bridge_to(to_ip, netns, target))
    return {**forward, "container": target.netns if target and target.netns != netns else None,
            "to_interface": target.id if target else None, "forward_accept": accept}


# -- FORWARD verdicts ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Packet:
    """The first packet of a published-port connection, after DNAT, in the FORWARD hook."""
    family: int
    proto: str
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    out: str | None  # bridge it leaves by (None: unknown)
    ctmark: int  # conntrack mark the DNAT rule set (netavark)
    bridges: frozenset[str] = frozenset()  # bridges of the namespace: not where it came from


class _ForwardFilter:
    def __init__(self, tables: _Tables, bridges: dict[str, frozenset[str]]):
        self.tables = tables
        self.bridges = bridges  # netns -> bridge names
        self.cache: dict[tuple, bool | None] = {}
        self.filtered: dict[str, bool] = {}

    def accepts(self, forward: dict, rule: Rule, bridge: Callable[[], str | None]) -> bool | None:
        """True/False when every forward-hook filter chain accepts/one drops; None: unsure."""
        netns = forward["netns"]
        if not self._filtered(netns):
            return True  # nothing filters forwarded traffic here
        dst = _address(forward["to_ip"])
        packet = _Packet(dst.version, forward["proto"], dst, forward["to_port"], bridge(),
                         _ctmark(rule), self.bridges.get(netns, frozenset()))
        key = (netns, packet)
        if key not in self.cache:
            self.cache[key] = self._decide(netns, packet)
        return self.cache[key]

    def _filtered(self, netns: str) -> bool:
        if netns not in self.filtered:
            self.filtered[netns] = any(key[0] == netns for key, _ in self.tables.entries("forward", "filter"))
        return self.filtered[netns]

    def _decide(self, netns: str, packet: _Packet) -> bool | None:
        verdicts = [self._run(key, base.name, packet, base.policy or "ACCEPT", 0)
                    for key, base in self.tables.entries("forward", "filter")
                    if key[0] == netns and key[2] in (packet.family, 0)]
        if any(v == "DROP" for v in verdicts):
            return False
        return None if any(v is None for v in verdicts) else True

    def _run(self, key: GroupKey, chain: str, packet: _Packet, end: str | None,
             depth: int, start: int = 0) -> str | None:
        """Verdict of chain for packet: ACCEPT, DROP, `end` when it falls off, None: unsure.

        A rule whose matches we cannot decide splits the run in two; if both branches
        agree the verdict stands, otherwise it is unknown.
        """
        rules = self.tables.chain(key, chain)
        for index in range(start, len(rules)):
            rule = rules[index]
            matched = _matches(rule, packet)
            if matched is False:
                continue
            outcome = self._effect(key, rule, packet, depth)
            if outcome == _NEXT:
                continue
            if outcome == _LEAVE:  # RETURN: a base chain's policy decides, a user chain ends
                outcome = end
            if matched is None:
                if depth > MAX_DEPTH:
                    return None
                other = self._run(key, chain, packet, end, depth + 1, index + 1)
                return outcome if outcome == other else None
            return outcome
        return end

    def _effect(self, key: GroupKey, rule: Rule, packet: _Packet, depth: int) -> str | None:
        """ACCEPT, DROP, _NEXT (go on with the next rule), _LEAVE (leave this chain), None."""
        target = rule.target
        if target == "VMAP":
            return self._vmap(key, rule, packet, depth)
        return self._verdict(key, "goto" if rule.goto else "jump", target, packet, depth)

    def _verdict(self, key: GroupKey, how: str, target: str | None, packet: _Packet,
                 depth: int) -> str | None:
        if target in TERMINAL:
            return "DROP" if target == "REJECT" else target
        if target == "RETURN":
            return _LEAVE
        if self.tables.is_chain(key, target):
            if depth >= MAX_DEPTH:
                return None
            sub = self._run(key, target, packet, _FELL_OFF, depth + 1)
            if sub == _FELL_OFF:
                return _LEAVE if how == "goto" else _NEXT
            return sub
        return _NEXT  # LOG, MARK, CONTINUE, ...: not a verdict

    def _vmap(self, key: GroupKey, rule: Rule, packet: _Packet, depth: int) -> str | None:
        option = next((args[0] for opt, args, _ in rule.matches if opt == "vmap" and args), "")
        for element, verdict in rule.target_args:
            hit = _interface_match(option, element, packet)
            if hit is False:
                continue
            if hit is None:
                return None
            word, _, target = verdict.partition(" ")
            return self._verdict(key, word, target if target else word.upper(), packet, depth)
        return _NEXT


def _ctmark(rule: Rule) -> int:
    """netavark's DNAT sets `ct mark set meta mark | 0x1000`; its FORWARD accepts on it."""
    for option, value in rule.target_args:
        if option == "ct mark set":
            bits = value.rpartition("|")[2].strip()
            try:
                return int(bits, 0)
            except ValueError:
                return 0
    return 0


def _matches(rule: Rule, packet: _Packet) -> bool | None:
    result: bool | None = True
    for opt, args, negated in rule.matches:
        one = _match(opt, args, packet)
        if one is not None and negated:
            one = not one
        if one is False:
            return False
        if one is None:
            result = None
    return result


def _match(opt: str, args: tuple[str, ...], packet: _Packet) -> bool | None:
    value = args[0] if args else ""
    if opt in ("-m", "--comment", "--match", "vmap"):  # vmap keys are judged per element
        return True
    if opt in ("-d", "--destination"):
        net = _network(value)
        return None if net is None or net.version != packet.family else packet.dst in net
    if opt in ("-s", "--source"):
        # The client is outside; it is certainly not in the container's own subnet.
        net = _network(value)
        if net is not None and net.prefixlen == 0:
            return True
        return False if net is not None and net.version == packet.family and packet.dst in net else None
    if opt in ("-p", "--protocol"):
        return value in ("all", "0") or value == packet.proto
    if opt in ("--dport", "--destination-port", "--dports", "--destination-ports"):
        spans = [_port_range(p) for p in value.split(",")]
        if None in spans:
            return None
        return any(lo <= packet.dport <= (hi if hi is not None else lo) for lo, hi in spans)
    if opt in ("-i", "--in-interface", "-o", "--out-interface"):
        return _interface_match(opt, value, packet)
    if opt in ("--ctstate", "--state"):
        states = {s.strip().upper() for s in value.split(",")}
        return bool(states & {"NEW", "DNAT"})
    if opt == "--ctmark":
        return _masked(value, packet.ctmark)
    if opt == "--mark":
        return _masked(value, 0)  # a packet from outside arrives unmarked
    if opt == "--match-set" and value.startswith("docker-ext-bridges") and args[-1] == "dst":
        return packet.out is not None  # 28.0's set of Docker bridge subnets
    return None


def _interface_match(opt: str, name: str, packet: _Packet) -> bool | None:
    if opt in ("-o", "--out-interface"):
        if packet.out is None:
            return None
        return packet.out.startswith(name[:-1]) if name.endswith("+") else packet.out == name
    # In: some uplink, so none of the namespace's bridges; any other name we cannot tell.
    if name == packet.out or name in packet.bridges:
        return False
    return None


def _masked(value: str, mark: int) -> bool | None:
    want, _, mask = value.partition("/")
    try:
        want_bits, mask_bits = int(want, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        return None
    return mark & mask_bits == want_bits


# -- masquerades -----------------------------------------------------------------------------

def _masquerades(tables: _Tables) -> tuple[list[Masquerade], list[Rule]]:
    reached: dict[Rule, tuple[Match, ...]] = {}
    for key, base in tables.entries("postrouting", "nat"):
        for rule, path in tables.walk(key, base.name):
            if rule.target in ("MASQUERADE", "SNAT") and rule not in reached:
                reached[rule] = path
    found = [_masquerade(rule, path) for rule, path in reached.items()]
    unreached = [rule for by_chain in tables.rules.values() for chain_rules in by_chain.values()
                 for rule in chain_rules
                 if rule.target in ("MASQUERADE", "SNAT") and rule not in reached]
    found.sort(key=lambda m: (m.netns, m.backend, m.source or "", m.chain or ""))
    return found, unreached


def _masquerade(rule: Rule, path: tuple[Match, ...]) -> Masquerade:
    def pick(option: str, negated: bool) -> str | None:
        for opt, args, neg in reversed(path):
            if opt == option and args and neg == negated:
                return args[0]
        return None
    dest, dest_not = pick("-d", False), False
    if dest is None:
        dest = pick("-d", True)
        dest_not = dest is not None
    return Masquerade(netns=rule.netns, source=pick("-s", False), out_not=pick("-o", True),
                      owner=rule.owner, backend=rule.backend, out=pick("-o", False),
                      to_source=dict(rule.target_args).get("--to-source"), destination=dest,
                      dest_not=dest_not, chain=rule.chain, rule_text=rule.text)
