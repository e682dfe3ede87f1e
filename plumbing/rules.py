"""Our ruleset, as data: desired state -> tagged rules -> iptables-restore / nft text.

Pure. The rules are Docker's proxy-less layout (docs/kernel-layouts.md), moved into our own
BRIDGESCOPE-* chains, each rule tagged with the object that needs it, so a change adds or
deletes exactly the rules of one object and never touches anyone else's.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from bridgescope.plumbing.state import TAG, Adopted, Container, Forward, Network, State

PREFIX = "BRIDGESCOPE"
DNAT_CHAIN = "BRIDGESCOPE-DNAT"
POST_CHAIN = "BRIDGESCOPE-POSTROUTING"
FORWARD_CHAIN = "BRIDGESCOPE-FORWARD"
RAW_CHAIN = "BRIDGESCOPE-PREROUTING"
TABLES = ("raw", "nat", "filter")
BASE_CHAINS = (("raw", RAW_CHAIN), ("nat", DNAT_CHAIN), ("nat", POST_CHAIN),
               ("filter", FORWARD_CHAIN))
# Per-container and per-port rules live in shard chains (`BRIDGESCOPE-DNAT-0a`), chosen by a
# hash of the object id: iptables-nft deletes a rule by comparing it with every rule of its
# chain, so with thousands of forwards in one chain each removal costs ~40 ms of CPU per
# table; in a shard it costs what a short chain costs.
SHARDS = 16
SHARD_TAG = "shard"


def shard_chain(base: str, tag: str) -> str:
    return f"{base}-{zlib.crc32(tag.encode()) % SHARDS:02x}"


CHAINS = BASE_CHAINS + tuple((t, f"{c}-{i:02x}") for t, c in BASE_CHAINS for i in range(SHARDS))
SHARD_CHAINS = frozenset(c for _, c in CHAINS[len(BASE_CHAINS):])
JUMP_TAG = "jump"
NFT_TABLE = "bridgescope"


@dataclass(frozen=True)
class FwRule:
    """One iptables rule in structured form, so every backend can render it its own way."""
    table: str
    chain: str
    target: str  # ACCEPT, DROP, MASQUERADE, DNAT or one of our chains
    tag: str  # object id, rendered as the comment "bridgescope:<tag>"
    src: str | None = None
    src_not: bool = False
    dst: str | None = None
    dst_not: bool = False
    in_if: str | None = None
    in_not: bool = False
    out_if: str | None = None
    out_not: bool = False
    proto: str | None = None
    dport: int | None = None
    dst_type: str | None = None  # addrtype --dst-type
    src_type: str | None = None  # addrtype --src-type
    ctstate: str | None = None
    to_destination: str | None = None  # DNAT target

    @property
    def comment(self) -> str:
        return f"{TAG}{self.tag}"


# --- what each object needs ------------------------------------------------------------

def jumps() -> tuple[FwRule, ...]:
    """Entry points from the built-in chains; inserted once, first in their chain.

    OUTPUT has no `! -d 127.0.0.0/8`: without a userland proxy the host's own 127.0.0.1
    clients must be DNATed too (Docker's proxy-less/hairpin mode)."""
    return (
        FwRule("raw", "PREROUTING", RAW_CHAIN, JUMP_TAG),
        FwRule("nat", "PREROUTING", DNAT_CHAIN, JUMP_TAG, dst_type="LOCAL"),
        FwRule("nat", "OUTPUT", DNAT_CHAIN, JUMP_TAG, dst_type="LOCAL"),
        FwRule("nat", "POSTROUTING", POST_CHAIN, JUMP_TAG),
        FwRule("filter", "FORWARD", FORWARD_CHAIN, JUMP_TAG),
    )


def user_jumps(state: State) -> tuple[FwRule, ...]:
    """The one tagged jump into our FORWARD chain from the engine's documented chain for users'
    rules (Docker's DOCKER-USER: first in FORWARD and never flushed by Docker, so our accepts
    come before its drops even after it restarts and re-inserts its jumps on top)."""
    chains = sorted({a.user_chain for a in state.adopted if a.user_chain})
    return tuple(FwRule("filter", c, FORWARD_CHAIN, JUMP_TAG) for c in chains)


def has_chains(state: State) -> bool:
    """Our chains exist while anything of ours needs them."""
    return bool(state.networks or state.adopted)


def structure() -> tuple[FwRule, ...]:
    """Each base chain of ours hands over to its shards."""
    return tuple(FwRule(t, c, f"{c}-{i:02x}", SHARD_TAG)
                 for t, c in BASE_CHAINS for i in range(SHARDS))


def _sharded(rules: Iterable[FwRule]) -> tuple[FwRule, ...]:
    return tuple(replace(r, chain=shard_chain(r.chain, r.tag)) for r in rules)


def network_rules(net: Network) -> tuple[FwRule, ...]:
    br, tag = net.name, net.tag
    masq = (FwRule("nat", POST_CHAIN, "MASQUERADE", tag, src=net.subnet, out_if=br, out_not=True),
            ) if net.masquerade else ()
    return masq + (
        # The host's own (and 127.0.0.1) clients of a published port: replies must come back.
        FwRule("nat", POST_CHAIN, "MASQUERADE", tag, out_if=br, src_type="LOCAL"),
        FwRule("filter", FORWARD_CHAIN, "ACCEPT", tag, out_if=br, ctstate="RELATED,ESTABLISHED"),
        FwRule("filter", FORWARD_CHAIN, "ACCEPT", tag, in_if=br, out_if=br, out_not=True),
        FwRule("filter", FORWARD_CHAIN, "ACCEPT", tag, in_if=br, out_if=br),
        # Docker 28+: from outside the bridge only published ports reach a container. The
        # per-port accepts live in the shards, entered before this chain's own rules, so this
        # drop comes after every one of them (the raw guard misses traffic another DNAT sent).
        FwRule("filter", FORWARD_CHAIN, "DROP", tag, in_if=br, in_not=True, out_if=br),
    )


def container_rules(ctr: Container, net: Network) -> tuple[FwRule, ...]:
    # Docker 28+: nobody but the bridge reaches a container directly, only through published ports.
    return _sharded((FwRule("raw", RAW_CHAIN, "DROP", ctr.tag, dst=f"{ctr.ip}/32", in_if=net.name,
                            in_not=True),))


def forward_rules(fwd: Forward, ctr: Container, net: Network) -> tuple[FwRule, ...]:
    return forward_rules_to(fwd, ctr.ip, net.name)


def adopted_rules(fwd: Forward, a: Adopted) -> tuple[FwRule, ...]:
    return forward_rules_to(fwd, a.ip, a.bridge)


def forward_rules_to(fwd: Forward, ip: str, br: str) -> tuple[FwRule, ...]:
    """A published port to the container at `ip` behind bridge `br` (ours or an engine's)."""
    tag, cip = fwd.tag, f"{ip}/32"
    host_dst = f"{fwd.host_ip}/32" if fwd.host_ip else None
    rules = [
        FwRule("nat", DNAT_CHAIN, "DNAT", tag, dst=host_dst, proto=fwd.proto, dport=fwd.host_port,
               to_destination=f"{ip}:{fwd.container_port}"),
        # Hairpin: a container reaching its own published port gets replies through the host.
        FwRule("nat", POST_CHAIN, "MASQUERADE", tag, src=cip, dst=cip, proto=fwd.proto,
               dport=fwd.container_port),
        FwRule("filter", FORWARD_CHAIN, "ACCEPT", tag, dst=cip, in_if=br, in_not=True, out_if=br,
               proto=fwd.proto, dport=fwd.container_port),
    ]
    if fwd.host_ip is None or fwd.host_ip.startswith("127."):
        # route_localnet=1 would otherwise let a LAN neighbour reach 127.0.0.1:PORT (moby#45610).
        rules.append(FwRule("raw", RAW_CHAIN, "DROP", tag, dst="127.0.0.1/32", in_if="lo",
                            in_not=True, proto=fwd.proto, dport=fwd.host_port))
    return _sharded(rules)


def desired(state: State) -> tuple[FwRule, ...]:
    """Every rule of the state, in a stable order."""
    nets = {n.name: n for n in state.networks}
    ctrs = {c.name: c for c in state.containers}
    adopted = {a.name: a for a in state.adopted}
    out: list[FwRule] = list(structure()) if has_chains(state) else []
    for net in state.networks:
        out.extend(network_rules(net))
    for ctr in state.containers:
        out.extend(container_rules(ctr, nets[ctr.network]))
    for fwd in state.forwards:
        ctr = ctrs.get(fwd.container)
        if ctr is None:
            out.extend(adopted_rules(fwd, adopted[fwd.container]))
        else:
            out.extend(forward_rules(fwd, ctr, nets[ctr.network]))
    return tuple(out)


# --- iptables rendering ------------------------------------------------------------------

def _opt(flag: str, value: str | None, negate: bool) -> list[str]:
    if value is None:
        return []
    return (["!"] if negate else []) + [flag, value]


def argv(rule: FwRule) -> list[str]:
    """The rule spec after `-A CHAIN`, in iptables-save's order."""
    out = (_opt("-s", rule.src, rule.src_not) + _opt("-d", rule.dst, rule.dst_not)
           + _opt("-i", rule.in_if, rule.in_not) + _opt("-o", rule.out_if, rule.out_not))
    if rule.proto:
        out += ["-p", rule.proto]
        if rule.dport is not None:
            out += ["-m", rule.proto, "--dport", str(rule.dport)]
    if rule.dst_type:
        out += ["-m", "addrtype", "--dst-type", rule.dst_type]
    if rule.src_type:
        out += ["-m", "addrtype", "--src-type", rule.src_type]
    if rule.ctstate:
        out += ["-m", "conntrack", "--ctstate", rule.ctstate]
    out += ["-m", "comment", "--comment", rule.comment, "-j", rule.target]
    if rule.to_destination:
        out += ["--to-destination", rule.to_destination]
    return out


def _quote(word: str) -> str:
    """iptables-restore splits on blanks and honours double quotes; our words have no quotes."""
    return f'"{word}"' if (" " in word or not word) else word


def line(op: str, rule: FwRule, position: int | None = None) -> str:
    pos = [str(position)] if position is not None else []
    return " ".join([op, rule.chain, *pos, *map(_quote, argv(rule))])


def command(op: str, rule: FwRule, position: int | None = None) -> tuple[str, ...]:
    """The equivalent stand-alone iptables command (the teaching text), as argv."""
    pos = [str(position)] if position is not None else []
    return ("iptables", "-t", rule.table, op, rule.chain, *pos, *argv(rule))


@dataclass(frozen=True)
class Change:
    """One firewall transaction: what to add, what to delete, and chain housekeeping."""
    add: tuple[FwRule, ...] = ()
    delete: tuple[FwRule, ...] = ()
    new_chains: tuple[tuple[str, str], ...] = ()  # (table, chain) to create
    add_jumps: tuple[FwRule, ...] = ()  # inserted at position 1
    del_jumps: tuple[FwRule, ...] = ()
    drop_chains: tuple[tuple[str, str], ...] = ()  # (table, chain) to flush and delete
    flush_chains: tuple[tuple[str, str], ...] = ()  # (table, chain) to empty before adding

    def is_empty(self) -> bool:
        return not (self.add or self.delete or self.new_chains or self.add_jumps
                    or self.del_jumps or self.drop_chains or self.flush_chains)

    def only(self, tables: Iterable[str]) -> Change:
        """The part of this change that lives in the given tables."""
        keep = set(tables)

        def rules_in(rs: tuple[FwRule, ...]) -> tuple[FwRule, ...]:
            return tuple(r for r in rs if r.table in keep)

        def chains_in(cs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
            return tuple(c for c in cs if c[0] in keep)
        return Change(rules_in(self.add), rules_in(self.delete), chains_in(self.new_chains),
                      rules_in(self.add_jumps), rules_in(self.del_jumps),
                      chains_in(self.drop_chains), chains_in(self.flush_chains))

    def inverse(self) -> Change:
        """The undo of this change (a flush cannot be undone and is left out)."""
        return Change(add=self.delete, delete=self.add, new_chains=self.drop_chains,
                      add_jumps=self.del_jumps, del_jumps=self.add_jumps,
                      drop_chains=self.new_chains)


def restore_text(change: Change) -> str:
    """iptables-restore --noflush payload: one transaction over raw, nat and filter.

    In --noflush mode a `:CHAIN` line flushes that chain, so only chains that do not exist yet
    are declared; deletes go by full rule spec, never by index."""
    blocks = []
    for table in TABLES:
        declared = change.new_chains + change.flush_chains + change.drop_chains
        lines = [f":{c} - [0:0]" for t, c in declared if t == table]
        lines += [line("-D", r) for r in change.del_jumps if r.table == table]
        dropped = {c for t, c in change.drop_chains if t == table}
        lines += [line("-D", r) for r in change.delete if r.table == table and r.chain not in dropped]
        lines += [line("-A", r) for r in change.add if r.table == table]
        lines += [line("-I", r, 1) for r in change.add_jumps if r.table == table]
        lines += [f"-X {c}" for t, c in change.drop_chains if t == table]
        if lines:
            blocks.append("\n".join([f"*{table}", *lines, "COMMIT"]))
    return "\n".join(blocks) + "\n" if blocks else ""


def teaching_commands(change: Change) -> tuple[tuple[str, ...], ...]:
    """The same transaction as the iptables commands a person would type, in order, as argv
    (collector/shell.py makes them lines; a one-word argv starting with '#' is a comment).

    The shard scaffolding (16 chains per hook and the jumps into them) is a speed measure,
    not something to learn from; it is summarised in one comment line each way.
    """
    def plain(chains: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        return [(t, c) for t, c in chains if c not in SHARD_CHAINS]

    new_shards = len(change.new_chains) - len(plain(change.new_chains))
    old_shards = len(change.drop_chains) - len(plain(change.drop_chains))
    out: list[tuple[str, ...]] = [("iptables", "-t", t, "-N", c) for t, c in plain(change.new_chains)]
    if new_shards:
        out.append((f"# + {new_shards} shard chains ({SHARDS} per chain above, e.g. "
                    f"{BASE_CHAINS[1][1]}-00), each jumped to from its chain: per-container "
                    "rules are spread over them so that removing one stays fast",))
    out += [("iptables", "-t", t, "-F", c) for t, c in change.flush_chains]
    out += [command("-D", r) for r in change.del_jumps]
    out += [command("-D", r) for r in change.delete if r.tag != SHARD_TAG]
    out += [command("-A", r) for r in change.add if r.tag != SHARD_TAG]
    out += [command("-I", r, 1) for r in change.add_jumps]
    for t, c in plain(change.drop_chains):
        out += [("iptables", "-t", t, "-F", c), ("iptables", "-t", t, "-X", c)]
    if old_shards:
        out.append((f"# + flush and remove the {old_shards} shard chains",))
    return tuple(out)


# --- native nftables rendering ------------------------------------------------------------

# Our own base chains stand in for the built-in iptables chains (same hooks and priorities).
_BASE = {
    ("raw", "PREROUTING"): ("raw-PREROUTING", "filter", "prerouting", "raw"),
    ("nat", "PREROUTING"): ("nat-PREROUTING", "nat", "prerouting", "dstnat"),
    ("nat", "OUTPUT"): ("nat-OUTPUT", "nat", "output", "-100"),
    ("nat", "POSTROUTING"): ("nat-POSTROUTING", "nat", "postrouting", "srcnat"),
    ("filter", "FORWARD"): ("filter-FORWARD", "filter", "forward", "filter"),
}


def _nft_cmp(key: str, value: str | None, negate: bool, quote: bool = False) -> list[str]:
    if value is None:
        return []
    val = f'"{value}"' if quote else value
    return [key, "!=", val] if negate else [key, val]


def nft_statement(rule: FwRule) -> str:
    words = (_nft_cmp("ip saddr", rule.src, rule.src_not) + _nft_cmp("ip daddr", rule.dst, rule.dst_not)
             + _nft_cmp("iifname", rule.in_if, rule.in_not, True)
             + _nft_cmp("oifname", rule.out_if, rule.out_not, True))
    if rule.proto:
        words += [rule.proto, "dport", str(rule.dport)] if rule.dport is not None else \
            ["meta", "l4proto", rule.proto]
    if rule.dst_type:
        words += ["fib", "daddr", "type", rule.dst_type.lower()]
    if rule.src_type:
        words += ["fib", "saddr", "type", rule.src_type.lower()]
    if rule.ctstate:
        words += ["ct", "state", rule.ctstate.lower()]
    words.append("counter")
    verdict = {"ACCEPT": ["accept"], "DROP": ["drop"], "MASQUERADE": ["masquerade"],
               "DNAT": ["dnat", "to", rule.to_destination or ""]}.get(rule.target,
                                                                     ["jump", rule.target])
    return " ".join(words + verdict + ["comment", f'"{rule.comment}"'])


def nft_text(rules: Sequence[FwRule]) -> str:
    """A whole `table ip bridgescope`, replaced atomically (declare, delete, re-create)."""
    head = f"table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n"
    if not rules:
        return head
    body = []
    for (table, chain), (name, kind, hook, prio) in _BASE.items():
        stmts = [nft_statement(j) for j in jumps() if (j.table, j.chain) == (table, chain)]
        body.append(f"  chain {name} {{\n    type {kind} hook {hook} priority {prio}; policy accept;\n"
                    + "".join(f"    {s}\n" for s in stmts) + "  }")
    by_chain: dict[str, list[str]] = {}
    for r in rules:
        by_chain.setdefault(r.chain, []).append(nft_statement(r))
    for _, chain in CHAINS:
        body.append(f"  chain {chain} {{\n" + "".join(f"    {s}\n" for s in by_chain.get(chain, ()))
                    + "  }")
    return head + f"table ip {NFT_TABLE} {{\n" + "\n".join(body) + "\n}\n"
