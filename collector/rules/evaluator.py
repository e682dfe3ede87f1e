"""A packet through the firewall: one chain, one base chain, every base chain of a hook.

The kernel hands a packet to each base chain registered at a hook, lowest priority first,
whichever backend made it (iptables-legacy tables, iptables-nft's and native nftables' base
chains), and so does `run_hook`:
- an ACCEPT ends the walk through its own base chain only: the next one still sees the packet;
- a DROP (or REJECT) is final everywhere;
- in nat chains the first binding wins: once a DNAT, SNAT or MASQUERADE rewrote the packet,
  later nat chains at that hook are skipped;
- two base chains at the same hook and priority in different tables run in the order they
  were registered, which no listing shows: if both would rewrite the packet, the answer is
  unknown (a drop in either is a drop whatever the order).
Three-valued throughout: a rule whose match is unknown is followed both ways, and the
answer stands only if both agree. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import NamedTuple

from bridgescope.collector.model import Rule
from bridgescope.collector.rules.matcher import DstIndex, Packet, dst_index, interface, matches, may_match
from bridgescope.collector.rules.model import (
    MAX_DEPTH,
    NAT_TARGETS,
    Base,
    GroupKey,
    RuleSet,
    nft_family,
    parse_destination,
    vmap_option,
)

ACCEPT, DROP = "ACCEPT", "DROP"
_NEXT, _LEAVE, _FELL_OFF = "next rule", "leave chain", "fell off a user chain"  # not verdicts
_TERMINAL = {"ACCEPT": ACCEPT, "DROP": DROP, "REJECT": DROP}


@dataclass(frozen=True)
class ChainRun:
    """What one base chain did with a packet."""
    verdict: str | None  # ACCEPT or DROP (the policy's, when it fell off); None: cannot tell
    packet: Packet  # after the chain's rewrites
    rule: Rule | None = None  # the rule that gave the verdict; None: the policy
    binding: Rule | None = None  # the DNAT/SNAT/MASQUERADE/REDIRECT that rewrote it
    matched: tuple[Rule, ...] = ()  # every rule that matched on the way, jumps included


@dataclass(frozen=True)
class HookRun:
    """What every base chain of a hook did with a packet, in the order the kernel runs them."""
    verdict: str | None  # ACCEPT, DROP, None: cannot tell
    packet: Packet  # after the hook's rewrites
    runs: tuple[tuple[Base, ChainRun], ...] = ()
    decider: tuple[Base, Rule | None] | None = None  # for a DROP: where (rule None: the policy)
    binding: Rule | None = None
    unknown: str | None = None  # why the verdict is unknown, in words
    rewrite_unknown: bool = False  # where the packet goes next cannot be known

    def accepted_elsewhere(self) -> tuple[Base, ...]:
        """Base chains in other tables than the decider's that accepted the packet."""
        mine = self.decider[0].key if self.decider else None
        return tuple(b for b, r in self.runs if r.verdict == ACCEPT and b.key != mine)


def run_hook(rules: RuleSet, netns: str, hook: str, packet: Packet, *,
             masquerade_source: str | None = None) -> HookRun:
    """The packet through every base chain at hook in netns (any backend, its family)."""
    runs: list[tuple[Base, ChainRun]] = []
    binding: Rule | None = None
    unknown: str | None = None
    for prio, group in groupby(rules.bases(netns, hook, packet.family), key=lambda b: b.priority):
        done = [(b, run_base(rules, b, packet, masquerade_source)) for b in group
                if not (b.is_nat and binding is not None)]
        runs.extend(done)
        dropped = next(((b, r) for b, r in done if r.verdict == DROP), None)
        if dropped is not None:
            return HookRun(DROP, packet, tuple(runs), (dropped[0], dropped[1].rule), binding)
        binders = [(b, r) for b, r in done if r.binding is not None]
        if len({r.packet for _, r in binders}) > 1:
            names = " and ".join(describe(b) for b, _ in binders)
            return HookRun(None, packet, tuple(runs), binding=binding, rewrite_unknown=True, unknown=(
                f"{names} sit at the same hook and priority ({prio}) and both rewrite the packet; "
                "the kernel runs them in the order they were registered, which no listing shows"))
        if binders:
            binding, packet = binders[0][1].binding, binders[0][1].packet
        elif len(done) == 1:
            packet = done[0][1].packet  # a mark set for later chains
        unsure = next((b for b, r in done if r.verdict is None), None)
        if unsure is not None and unknown is None:
            unknown = f"cannot tell what {describe(unsure)} does with it"
    return HookRun(None if unknown else ACCEPT, packet, tuple(runs), binding=binding, unknown=unknown)


def describe(base: Base) -> str:
    """`the iptables-legacy filter table's FORWARD chain`, in words."""
    tool = {"legacy": "iptables-legacy", "nft": "iptables-nft", "nftables": "nftables"}
    chain = base.chain
    table = (f"{tool.get(chain.backend, chain.backend)} {chain.table} table" if chain.backend != "nftables"
             else f"nftables table {nft_family(base.key[2])} {chain.table}")
    return f"the {table}'s {chain.name} chain"


def run_base(rules: RuleSet, base: Base, packet: Packet,
             masquerade_source: str | None = None) -> ChainRun:
    """One base chain: its rules, its jumps, then its policy."""
    walker = _Walker(rules, base.key, base.is_nat, masquerade_source)
    policy = DROP if (base.chain.policy or "ACCEPT").upper() == "DROP" else ACCEPT
    state = walker.run(base.chain.name, _State(packet), policy, 0)
    return ChainRun(state.flow if state.flow in (ACCEPT, DROP) else None, state.packet,
                    state.rule, state.binding, state.matched)


class _State(NamedTuple):
    """Where a walk stands. A named tuple, not a dataclass: a walk makes a new one per rule
    that matches, and `_replace` costs a fifth of `dataclasses.replace`."""
    packet: Packet
    flow: str | None = _NEXT  # ACCEPT, DROP, _NEXT, _LEAVE, _FELL_OFF, None (unknown)
    rule: Rule | None = None
    binding: Rule | None = None
    matched: tuple[Rule, ...] = ()

    def same_outcome(self, other: _State) -> bool:
        return (self.flow, self.packet, self.binding) == (other.flow, other.packet, other.binding)


# Rules a walk may visit: a match that cannot be decided is followed both ways, so loops of
# jumps over undecidable matches would grow without bound; past this the answer is "unknown".
MAX_VISITS = 20_000


@dataclass(frozen=True)
class _Walker:
    rules: RuleSet
    key: GroupKey
    nat: bool  # a nat base chain: its DNAT/SNAT/MASQUERADE bind
    masquerade_source: str | None
    visits: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    def run(self, chain: str, state: _State, end: str, depth: int, start: int = 0) -> _State:
        """chain's rules from start; falling off (or RETURN in a base chain) gives `end`."""
        rules = self.rules.chain(self.key, chain)
        packet = state.packet
        order = may_match(self._index(chain, rules), len(rules), packet, start)
        last = start - 1
        for index in order:
            # the rules passed over cannot match, yet count as visited (as when each was tried)
            self.visits[0] += index - last
            last = index
            if self.visits[0] > MAX_VISITS:
                return state._replace(flow=None)
            if state.packet.dst != packet.dst:  # a rewrite the chain goes on after (none does today)
                self.visits[0] -= 1  # the run from index counts it again
                return self.run(chain, state, end, depth, index)
            rule = rules[index]
            hit = matches(rule, state.packet)
            if hit is False:
                continue
            taken = self._effect(rule, state._replace(matched=state.matched + (rule,)), depth)
            if taken.flow == _NEXT:
                if hit:
                    state = taken
                continue
            if taken.flow == _LEAVE:
                taken = taken._replace(flow=end, rule=None)
            if hit is None:  # follow both ways
                if depth > MAX_DEPTH:
                    return state._replace(flow=None)
                other = self.run(chain, state, end, depth + 1, index + 1)
                return other if other.same_outcome(taken) else other._replace(flow=None)
            return taken
        self.visits[0] += len(rules) - 1 - last
        if self.visits[0] > MAX_VISITS:
            return state._replace(flow=None)
        return state._replace(flow=end, rule=None)

    def _index(self, chain: str, rules: list[Rule]) -> DstIndex:
        found = self.rules.indexes.get((self.key, chain))
        if found is None:
            found = self.rules.indexes[(self.key, chain)] = dst_index(rules)
        return found

    def _effect(self, rule: Rule, state: _State, depth: int) -> _State:
        target = rule.target or ""
        if target == "VMAP":
            return self._vmap(rule, state, depth)
        if target in NAT_TARGETS:
            if not self.nat:
                return state._replace(flow=_NEXT)
            return state._replace(flow=ACCEPT, rule=rule, binding=rule,
                           packet=rewrite(rule, state.packet, self.masquerade_source))
        if target == "MARK":
            return state._replace(flow=_NEXT, packet=_marked(rule, state.packet))
        return self._verdict("goto" if rule.goto else "jump", target, rule, state, depth)

    def _verdict(self, how: str, target: str, rule: Rule, state: _State, depth: int) -> _State:
        if target in _TERMINAL:
            return state._replace(flow=_TERMINAL[target], rule=rule)
        if target == "RETURN":
            return state._replace(flow=_LEAVE)
        if self.rules.is_chain(self.key, target):
            if depth >= MAX_DEPTH:
                return state._replace(flow=None)
            sub = self.run(target, state, _FELL_OFF, depth + 1)
            if sub.flow == _FELL_OFF:
                return sub._replace(flow=_LEAVE if how == "goto" else _NEXT)
            return sub
        return state._replace(flow=_NEXT)  # LOG, CONTINUE, CONNMARK, ...: not a verdict

    def _vmap(self, rule: Rule, state: _State, depth: int) -> _State:
        option = vmap_option(rule)
        for element, verdict in rule.target_args:
            hit = interface(option, element, state.packet) if option in ("-i", "-o") else None
            if hit is False:
                continue
            if hit is None:
                return state._replace(flow=None)
            word, _, target = verdict.partition(" ")
            return self._verdict(word, target or word.upper(), rule, state, depth)
        return state._replace(flow=_NEXT, matched=state.matched[:-1])  # no element: no match


def rewrite(rule: Rule, packet: Packet, masquerade_source: str | None = None) -> Packet:
    """The packet after a NAT rule bound it (conntrack then says DNAT or SNAT)."""
    args = dict(rule.target_args)
    if rule.target == "DNAT":
        to = parse_destination(args.get("--to-destination", ""))
        if to is None:
            return replace(packet, ctstate=packet.ctstate | {"DNAT"})
        return replace(packet, dst=to[0], dport=to[1] if to[1] is not None else packet.dport,
                       ctstate=packet.ctstate | {"DNAT"})
    if rule.target == "REDIRECT":
        port = (args.get("--to-ports") or "").split("-")[0]
        return replace(packet, dport=int(port) if port.isdecimal() else packet.dport,
                       ctstate=packet.ctstate | {"DNAT"})
    if rule.target == "SNAT":
        to = parse_destination(args.get("--to-source", ""))
        return replace(packet, src=to[0] if to else packet.src, ctstate=packet.ctstate | {"SNAT"})
    return replace(packet, src=masquerade_source or packet.src, ctstate=packet.ctstate | {"SNAT"})


def _marked(rule: Rule, packet: Packet) -> Packet:
    """`-j MARK --set-xmark VALUE/MASK` (how iptables-save prints every MARK form)."""
    value, _, mask = (dict(rule.target_args).get("--set-xmark") or "").partition("/")
    try:
        bits, mask_bits = int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        return packet
    return replace(packet, mark=(packet.mark & ~mask_bits) ^ bits)
