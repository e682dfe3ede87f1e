"""Who wrote a firewall rule: docker, cni, podman, kube-proxy, bridgescope or unknown.

Pure functions over parsed rules. Docker's iptables rules carry no comments, so beyond its
chain names (DOCKER, DOCKER-*, and DOCKER_* inside containers) a rule in a built-in chain
is Docker's when it names a Docker bridge (docker0, br-<12 hex>, or a bridge Docker's own
chains name) or matches a port Docker published (the hairpin MASQUERADE of <=27, the raw
DROP guarding a port bound to 127.0.0.1 since 28).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from itertools import groupby
from operator import attrgetter

from bridgescope.collector.model import Owner, Rule, built

BRIDGESCOPE_TAG = "bridgescope:"
_CHAIN_OWNERS = (  # (compiled chain-name pattern, owner), first match wins
    (re.compile(r"BRIDGESCOPE-"), "bridgescope"),
    (re.compile(r"DOCKER(?:$|[-_])"), "docker"),
    (re.compile(r"CNI-"), "cni"),
    (re.compile(r"NETAVARK"), "podman"),
    (re.compile(r"KUBE-"), "kube-proxy"),
)
_NFT_TABLE_OWNERS = (
    (re.compile(r"bridgescope$"), "bridgescope"),
    (re.compile(r"docker"), "docker"),
    (re.compile(r"netavark$"), "podman"),
    (re.compile(r"cni"), "cni"),
    (re.compile(r"kube-proxy$"), "kube-proxy"),
)
_COMMENT_OWNERS = (
    (re.compile(r"netavark"), "podman"),
    (re.compile(r'CNI |^(?:dnat )?name: ".*" id: "'), "cni"),
    (re.compile(r"^kubernetes |^kube-|KUBE-"), "kube-proxy"),
)
# Whether any of them matches, in one search: most comments name no owner at all
_ANY_COMMENT_OWNER = re.compile("|".join(f"(?:{p.pattern})" for p, _ in _COMMENT_OWNERS))
_DOCKER_BRIDGE = re.compile(r"docker0$|br-[0-9a-f]{12}$")
_INTERFACE_OPTIONS = frozenset({"-i", "-o", "--in-interface", "--out-interface"})
_PLACE = attrgetter("backend", "table", "chain")


@lru_cache(maxsize=4096)
def chain_owner(backend: str, table: str, chain: str) -> Owner | None:
    """The owner implied by where a rule lives (nft table or iptables chain), if any."""
    patterns = _NFT_TABLE_OWNERS if backend == "nftables" else _CHAIN_OWNERS
    name = table if backend == "nftables" else chain
    return next((owner for pattern, owner in patterns if pattern.match(name)), None)


def attribute(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """Return the rules with `owner` filled in (same order)."""
    # a listing holds each chain's rules together: the owner its place implies is found once
    # per run of rules, and only Docker's own chains are read for its traits
    runs = [(chain_owner(*place), tuple(run)) for place, run in groupby(rules, _PLACE)]
    docker = _DockerTraits.of(rule for by_place, run in runs if by_place == "docker" for rule in run)
    attributed: list[Rule] = []
    for by_place, run in runs:
        for rule in run:
            owner = owner_of(rule, docker, by_place)
            attributed.append(rule if rule.owner == owner else
                              built(Rule, {**rule.__dict__, "owner": owner}))
    return tuple(attributed)


def owner_of(rule: Rule, docker: _DockerTraits, by_place: Owner | None) -> Owner:
    """Who wrote rule; by_place: what `chain_owner` says of where it lives."""
    comment = rule.comment
    if comment and comment.startswith(BRIDGESCOPE_TAG):
        return "bridgescope"
    if by_place:
        return by_place
    if rule.target and rule.backend != "nftables":
        by_target = chain_owner(rule.backend, rule.table, rule.target)
        if by_target:
            return by_target
    if comment and _ANY_COMMENT_OWNER.search(comment):
        by_comment = next((o for p, o in _COMMENT_OWNERS if p.search(comment)), None)
        if by_comment:
            return by_comment
    return "docker" if docker.claims(rule) else "unknown"


class _DockerTraits:
    """What Docker's own chains reveal in each namespace: its bridges and published ports."""

    def __init__(self, bridges: dict[str, set[str]], ports: dict[str, set[tuple[str, str]]],
                 targets: dict[str, set[tuple[str, str]]]):
        self.bridges = bridges  # netns -> bridge names
        self.ports = ports  # netns -> {(proto, host port)}
        self.targets = targets  # netns -> {(container ip, port)}

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> _DockerTraits:
        """From the rules of Docker's own chains."""
        bridges: dict[str, set[str]] = defaultdict(set)
        ports: dict[str, set[tuple[str, str]]] = defaultdict(set)
        targets: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for rule in rules:
            bridges[rule.netns].update(_interfaces(rule))
            if rule.target == "DNAT":
                firsts = _firsts(rule)
                proto, port = firsts.get("-p"), firsts.get("--dport")
                dest = dict(rule.target_args).get("--to-destination", "")
                ip, _, to_port = dest.rpartition(":")
                if proto and port:
                    ports[rule.netns].add((proto, port))
                    targets[rule.netns].add((ip, to_port or port))
        return cls(bridges, ports, targets)

    def claims(self, rule: Rule) -> bool:
        if rule.backend == "nftables":
            return False
        bridges = self.bridges.get(rule.netns, ())
        match_set = None  # the first (non-negated) ipset matched
        for opt, args, negated in rule.matches:  # one pass: every rule of the host comes here
            if not args:
                continue
            if opt in _INTERFACE_OPTIONS:
                if _docker_bridge(args[0]) or args[0] in bridges:
                    return True
            elif opt == "--match-set" and match_set is None and not negated:
                match_set = args[0]
        if match_set is not None and match_set.startswith("docker-ext-bridges"):
            return True  # 28.0.0 matched its bridges through this ipset
        if rule.target == "MASQUERADE":  # <=27 hairpin: -s C -d C --dport P
            firsts = _firsts(rule)
            proto, port = firsts.get("-p"), firsts.get("--dport")
            if proto and port:
                dest = (firsts.get("-d") or "").removesuffix("/32").removesuffix("/128")
                return (dest, port) in self.targets.get(rule.netns, ())
        elif rule.table == "raw" and rule.target == "DROP":
            firsts = _firsts(rule)
            proto, port = firsts.get("-p"), firsts.get("--dport")
            if proto and port:
                return (proto, port) in self.ports.get(rule.netns, ())
        return False


@lru_cache(maxsize=4096)
def _docker_bridge(name: str) -> bool:
    """Named as Docker names its bridges (a host has few: every rule names the same ones)."""
    return _DOCKER_BRIDGE.match(name) is not None


def _firsts(rule: Rule) -> dict[str, str]:
    """The first non-negated value of each option (`-p`, `--dport`, ...), in one pass."""
    return {opt: args[0] for opt, args, negated in reversed(rule.matches) if args and not negated}


def _interfaces(rule: Rule) -> list[str]:
    return [args[0] for opt, args, _ in rule.matches if opt in _INTERFACE_OPTIONS and args]


def split_brain_warnings(rules: Iterable[Rule]) -> tuple[str, ...]:
    """One warning per namespace whose rules live in iptables-legacy AND nf_tables."""
    counts: dict[str, Counter] = defaultdict(Counter)
    tables: dict[tuple[str, str], set[str]] = defaultdict(set)
    # counted in C, then grouped: one namespace holds thousands of rules but few tables
    for (netns, backend, table), count in Counter((r.netns, r.backend, r.table) for r in rules).items():
        counts[netns][backend] += count
        tables[(netns, backend)].add(table)
    warnings = []
    for netns, by_backend in sorted(counts.items()):
        if by_backend["legacy"] and (by_backend["nft"] or by_backend["nftables"]):
            others = [f"{by_backend[b]} in {name} ({', '.join(sorted(tables[(netns, b)]))})"
                      for b, name in (("nft", "iptables-nft"), ("nftables", "native nftables"))
                      if by_backend[b]]
            warnings.append(
                f"split brain in namespace {netns}: {by_backend['legacy']} rules in "
                f"iptables-legacy ({', '.join(sorted(tables[(netns, 'legacy')]))}) and "
                f"{' and '.join(others)}; both are active, and `iptables` shows only one of them")
    return tuple(warnings)
