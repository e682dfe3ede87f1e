"""NAT interpretation: pure functions from rules (+ interfaces) to forwards and masquerades.

The kernel runs a packet through the nat base chains (PREROUTING for traffic arriving,
OUTPUT for the host's own connections, POSTROUTING on the way out), following jumps. We do
the same with the rules: every DNAT reached from a prerouting/output base chain is a port
forward with the conditions collected on the way (protocol, port, host address); a DNAT no
path reaches is reported too, marked unreachable. Every MASQUERADE/SNAT reached from
postrouting is a masquerade. The FORWARD verdict for each forward is worked out by running
a synthetic first packet (external client -> container ip:port, conntrack state NEW and
DNAT) through every base chain on the forward hook, in every backend (rules/evaluator.py):
an accept in one base chain does not save a packet another one drops.

Backends and families are treated alike: nftables rules were already translated into the
iptables vocabulary by the nft JSON decoder (see firewall/nftjson.py); the rule set, its
parsers and the matcher are the shared ones of collector/rules.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from bridgescope.collector.model import (
    Chain,
    Interface,
    Masquerade,
    Namespace,
    PortForward,
    Rule,
    built,
    no_cycle_collection,
)
from bridgescope.collector.rules.evaluator import ACCEPT, DROP, HookRun, run_hook
from bridgescope.collector.rules.matcher import Packet
from bridgescope.collector.rules.model import (
    Match,
    RuleSet,
    address,
    address_number,
    canonical,
    host_text,
    parse_destination,
    port_spans,
    span,
    spellings,
)


@dataclass(frozen=True)
class NatView:
    port_forwards: tuple[PortForward, ...] = ()
    masquerades: tuple[Masquerade, ...] = ()
    warnings: tuple[str, ...] = ()


_last: list[tuple[tuple, NatView]] = []  # the previous interpretation and what it was made of


def interpret(rules: tuple[Rule, ...], chains: tuple[Chain, ...],
              interfaces: tuple[Interface, ...], namespaces: tuple[Namespace, ...],
              *, proxies: tuple[PortForward, ...] = ()) -> NatView:
    """Port forwards (DNAT and docker-proxy) and masquerades, each resolved to interfaces.

    The same rules read again (the firewall reader hands back the very Rule objects when the
    kernel says nothing changed) cost one comparison, not a walk of every rule."""
    inputs = (rules, chains, interfaces, namespaces, proxies)
    last = _last[0] if _last else None
    if last is not None and last[0] == inputs:
        return last[1]
    with no_cycle_collection():
        view = _interpret(rules, chains, interfaces, namespaces, proxies)
    _last[:] = [(inputs, view)]
    return view


def forget() -> None:
    """Interpret the next rules from scratch (what a cold read measures)."""
    _last.clear()


def _interpret(rules: tuple[Rule, ...], chains: tuple[Chain, ...], interfaces: tuple[Interface, ...],
               namespaces: tuple[Namespace, ...], proxies: tuple[PortForward, ...]) -> NatView:
    tables = RuleSet(rules, chains)
    where = _locator(interfaces)
    filters = _ForwardFilter(tables, where.bridge_names())
    dnats, masquerading, unreached = _nat_rules(tables)
    forwards: list[PortForward] = []
    warnings: list[str] = []
    on_path: dict[int, _Conditions] = {}  # by id: the rules of one chain share their path
    for rule, reachable, path in dnats:
        outer = on_path.get(id(path))
        if outer is None:
            outer = on_path[id(path)] = _conditions(path)
        problem = _forwards_of(rule, reachable, _conditions(rule.matches, outer), where, filters,
                               forwards)
        if problem:
            warnings.append(problem)
    for proxy in proxies:
        _, container, to_interface = _landing(proxy.to_ip, proxy.netns, where)
        forwards.append(replace(proxy, container=container, to_interface=to_interface,
                                forward_accept=None))
    masquerades = [_masquerade(rule, path + rule.matches) for rule, path in masquerading]
    masquerades.sort(key=lambda m: (m.netns, m.backend, m.source or "", m.chain or ""))
    warnings.extend(f"{r.backend} rule `{r.text}` in {r.netns} ({r.table}/{r.chain}) is never "
                    f"reached from POSTROUTING, so it masquerades nothing" for r in unreached)
    forwards.sort(key=lambda f: (f.netns, f.proto, f.host_port, f.host_ip or "", f.via, f.backend))
    return NatView(tuple(forwards), tuple(masquerades), tuple(warnings))


# -- which NAT rules a packet reaches, and how ---------------------------------------------

_DNAT = frozenset({"DNAT"})
_SOURCE_NAT = frozenset({"MASQUERADE", "SNAT"})
_NatRules = tuple[list[tuple[Rule, bool, tuple[Match, ...]]], list[tuple[Rule, tuple[Match, ...]]],
                  list[Rule]]


def _nat_rules(tables: RuleSet) -> _NatRules:
    """The DNATs, each with whether PREROUTING reaches it and the path it is reached by
    (PREROUTING's, else OUTPUT's, else none: a DNAT no base chain leads to is reported too);
    the MASQUERADE/SNATs POSTROUTING reaches, with their paths; and those it does not."""
    dnats: dict[int, tuple[Rule, bool, tuple[Match, ...]]] = {}  # by id: Rule hashes slowly
    for hook in ("prerouting", "output"):
        for base in tables.all_bases(hook, "nat"):
            for rule, path in tables.walk(base.key, base.chain.name, _DNAT):
                dnats.setdefault(id(rule), (rule, hook == "prerouting", path))
    masquerading: dict[int, tuple[Rule, tuple[Match, ...]]] = {}
    for base in tables.all_bases("postrouting", "nat"):
        for rule, path in tables.walk(base.key, base.chain.name, _SOURCE_NAT):
            masquerading.setdefault(id(rule), (rule, path))
    unreached: list[Rule] = []
    for by_chain in tables.rules.values():  # one pass for what no base chain leads to
        for chain_rules in by_chain.values():
            for rule in chain_rules:
                if rule.target == "DNAT":
                    dnats.setdefault(id(rule), (rule, False, ()))
                elif rule.target in _SOURCE_NAT and id(rule) not in masquerading:
                    unreached.append(rule)
    return list(dnats.values()), list(masquerading.values()), unreached


# -- DNAT -> port forwards -----------------------------------------------------------------

# What a DNAT's path asks of a packet: protocol, destination ports (a match's text), host
# address; None where nothing asks
_Conditions = tuple[str | None, str | None, str | None]
_NOTHING: _Conditions = (None, None, None)
_ANY_PORT = ((0, None),)


def _forwards_of(rule: Rule, reachable: bool, conditions: _Conditions, where: _Locator,
                 filters: _ForwardFilter, forwards: list[PortForward]) -> str | None:
    """One DNAT rule (and what its path asks for) -> its forwards, added to forwards; or a
    problem in words."""
    dest = _target_arg(rule, "--to-destination")
    parsed = parse_destination(dest)
    if parsed is None:
        return (f"cannot understand DNAT destination {dest!r} of `{rule.text}` in "
                f"{rule.netns}; that forward is not shown")
    to_ip, to_lo, to_hi = parsed
    proto, ports, host_ip = conditions
    spans = port_spans(ports) if ports is not None else _ANY_PORT
    if None in spans:
        return f"cannot understand the ports of `{rule.text}` in {rule.netns}; that forward is not shown"
    netns = rule.netns
    target, container, to_interface = _landing(to_ip, netns, where)
    filtered = filters.filtered(netns)
    out = where.bridge_to(to_ip, netns, target) if filtered else None  # the bridge it leaves by
    for host_lo, host_hi in spans:
        fields = {
            "netns": netns, "proto": proto or "all", "host_ip": host_ip, "host_port": host_lo,
            "host_port_end": host_hi, "to_ip": to_ip,
            "to_port": to_lo if to_lo is not None else host_lo,
            "to_port_end": to_hi if to_lo is not None else host_hi, "owner": rule.owner,
            "backend": rule.backend, "reachable": reachable, "chain": rule.chain,
            "rule_text": rule.text, "container": container, "to_interface": to_interface,
            "forward_accept": True}  # nothing filters forwarded traffic, unless:
        if filtered:
            fields["forward_accept"] = filters.accepts(fields, rule, out)
        forwards.append(built(PortForward, fields))
    return None


def _target_arg(rule: Rule, name: str) -> str:
    """The value of a target option (the last, if given twice), else ""."""
    for option, value in reversed(rule.target_args):
        if option == name:
            return value
    return ""


_PROTO, _DEST = spellings("-p"), spellings("-d")
_PORTS = spellings("--dport") | spellings("--ports")
_ASKED = _PROTO | _PORTS | _DEST


def _conditions(matches: tuple[Match, ...], outer: _Conditions = _NOTHING) -> _Conditions:
    """(protocol, destination ports, host address) that matches ask for: each the innermost
    (last) non-negated one, in one pass, else outer's (what the path to them asks); a host
    `-d` that names no single address or network (0/0, junk) is passed over."""
    proto, ports, host = outer
    for opt, args, negated in matches:
        if opt in _ASKED and args and not negated:
            if opt in _PROTO:
                proto = args[0]
            elif opt in _PORTS:
                ports = args[0]
            else:
                host = host_text(args[0]) or host
    return proto, ports, host


# -- where a forward lands ------------------------------------------------------------------

_last_locator: tuple[tuple[Interface, ...], _Locator] | None = None


def _locator(interfaces: tuple[Interface, ...]) -> _Locator:
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
        number = address_number(ip)
        if number is None:
            raise ValueError(f"{ip!r} is not an IP address")
        for bridge in self.bridges.get(netns, []):
            for cidr in bridge.addresses:
                net = span(cidr)
                if net is not None and net[0] == number[0] and net[1] <= number[1] <= net[2]:
                    return bridge.name
        return None


def _landing(to_ip: str, netns: str, where: _Locator) -> tuple[Interface | None, str | None, str | None]:
    """Where a forward to to_ip lands: the interface, and the forward's container and
    to_interface."""
    target = where.owner(to_ip, netns)
    if target is None:
        return None, None, None
    return target, target.netns if target.netns != netns else None, target.id


# -- FORWARD verdicts ----------------------------------------------------------------------

def forward_packet(forward: dict | PortForward, rule: Rule | None, out: str | None,
                   bridges: frozenset[str]) -> Packet:
    """The first packet of a published-port connection, after DNAT, in the FORWARD hook: from
    some uplink (none of the namespace's bridges), leaving by bridge `out` (None: unknown)."""
    get = forward.get if isinstance(forward, dict) else lambda name: getattr(forward, name)
    dst = get("to_ip")
    number = address_number(dst)
    return Packet(number[0] if number else address(dst).version, get("proto"), dst, get("to_port"),
                  oif=out, not_iif=bridges | ({out} if out else set()), src_remote=True,
                  bridges=bridges, ctstate=frozenset({"NEW", "DNAT"}),
                  ctmark=_ctmark(rule) if rule is not None else 0)


def forward_verdict(tables: RuleSet, netns: str, packet: Packet) -> HookRun:
    return run_hook(tables, netns, "forward", packet)


class _ForwardFilter:
    def __init__(self, tables: RuleSet, bridges: dict[str, frozenset[str]]):
        self.tables = tables
        self.bridges = bridges  # netns -> bridge names
        self.cache: dict[tuple, bool | None] = {}
        self.has_bases: dict[str, bool] = {}

    def filtered(self, netns: str) -> bool:
        """Does any base chain sit on netns's forward hook? (Asked once per forward.)"""
        known = self.has_bases.get(netns)
        if known is None:
            known = self.has_bases[netns] = bool(self.tables.bases(netns, "forward"))
        return known

    def accepts(self, forward: dict, rule: Rule, bridge: str | None) -> bool | None:
        """True/False when every forward-hook base chain accepts/one drops; None: unsure.
        Asked only where a base chain sits on the forward hook (`filtered`)."""
        netns = forward["netns"]
        packet = forward_packet(forward, rule, bridge, self.bridges.get(netns, frozenset()))
        key = (netns, packet)
        if key not in self.cache:
            verdict = forward_verdict(self.tables, netns, packet).verdict
            self.cache[key] = {ACCEPT: True, DROP: False}.get(verdict or "")
        return self.cache[key]


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


# -- masquerades -----------------------------------------------------------------------------

_MASQUERADE_ASKS = frozenset({"-d", "-s", "-o"})


def _masquerade(rule: Rule, path: tuple[Match, ...]) -> Masquerade:
    """What a MASQUERADE/SNAT's path asks (each the innermost), read in one pass."""
    asks: dict[tuple[str, bool], str] = {}  # (option, negated) -> value; inner ones come later
    for opt, args, negated in path:
        name = canonical(opt)
        if name in _MASQUERADE_ASKS and args:
            asks[(name, negated)] = args[0]
    dest, dest_not = asks.get(("-d", False)), False
    if dest is None:
        dest = asks.get(("-d", True))
        dest_not = dest is not None
    return built(Masquerade, {
        "netns": rule.netns, "source": asks.get(("-s", False)), "out_not": asks.get(("-o", True)),
        "owner": rule.owner, "backend": rule.backend, "out": asks.get(("-o", False)),
        "to_source": dict(rule.target_args).get("--to-source"), "destination": dest,
        "dest_not": dest_not, "chain": rule.chain, "rule_text": rule.text})
