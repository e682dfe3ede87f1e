"""Tables for when a graph is the wrong view: NAT rules and port forwards, filterable.

The filter is plain text matched (case-insensitively) against every column, so "8080",
"docker", "172.17.0.2" or a namespace name all work; htmx asks again as the user types and
swaps only the table body. By default only the served host's firewall is listed (other labs
and containers on the machine hold look-alike rules) and bridgescope's own shard jumps, a
speed measure with nothing to learn from, are left out; two toggles show them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flask import Blueprint, request

from bridgescope.collector.kernel.listeners import ListenerRead
from bridgescope.collector.model import PortForward, Rule, Snapshot, portforward_id
from bridgescope.collector.rules.reach import HOST, LOOPBACK, OUTSIDE, ForwardReach, meant_sources, reach
from bridgescope.plumbing.rules import SHARD_CHAINS, SHARD_TAG
from bridgescope.plumbing.state import TAG
from bridgescope.webui import verdicts
from bridgescope.webui.app import runtime
from bridgescope.webui.pages import page_or_fragment
from bridgescope.webui.verdicts import verdict_text

bp = Blueprint("tables", __name__, url_prefix="/tables")

TABLE_CHOICES = ("nat", "filter", "all")


@dataclass(frozen=True)
class RuleRow:
    namespace: str
    backend: str
    table: str
    chain: str
    text: str
    owner: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class ForwardRow:
    namespace: str
    proto: str
    host: str
    to: str
    container: str
    owner: str
    backend: str
    outside: str  # the reachability verdicts (rules/reach.py), as the forward's panel words them
    from_host: str
    outside_class: str = "muted"  # ok, warn, or muted where the forward is not published for it
    from_host_class: str = "muted"


def _names(snap: Snapshot) -> dict[str, str]:
    return {n.id: n.name for n in snap.namespaces}


@dataclass(frozen=True)
class TableScope:
    """Which rows to list: the served host only (default) or every namespace; with or
    without bridgescope's shard scaffolding."""
    every_namespace: bool = False
    scaffolding: bool = False


def served_host(snap: Snapshot) -> str | None:
    host = snap.host_namespace()
    return host.id if host else None


def is_scaffolding(rule: Rule) -> bool:
    """A jump from one of our base chains into its shard (BRIDGESCOPE-DNAT -> -DNAT-0a)."""
    return rule.target in SHARD_CHAINS or rule.comment == f"{TAG}{SHARD_TAG}"


def _in_scope(netns: str, host: str | None, scope: TableScope) -> bool:
    return scope.every_namespace or host is None or netns == host


def rule_rows(snap: Snapshot, table: str = "nat", scope: TableScope = TableScope()) -> list[RuleRow]:
    names, host = _names(snap), served_host(snap)
    return [RuleRow(names.get(r.netns, r.netns), r.backend, r.table, r.chain, r.text, r.owner,
                    r.packets, r.bytes)
            for r in snap.rules if (table == "all" or r.table == table)
            and _in_scope(r.netns, host, scope) and (scope.scaffolding or not is_scaffolding(r))]


def host_side(pf: PortForward) -> str:
    return f"{pf.host_ip or '*'}:{pf.host_port}" + (f"-{pf.host_port_end}" if pf.host_port_end else "")


def container_side(pf: PortForward) -> str:
    return f"{pf.to_ip}:{pf.to_port}" + (f"-{pf.to_port_end}" if pf.to_port_end else "")


def forward_rows(snap: Snapshot, scope: TableScope = TableScope(), listeners: ListenerRead | None = None,
                 verdicts_of: Iterable[ForwardReach] | None = None) -> list[ForwardRow]:
    """Each forward with its verdicts from outside and from the host (the host's DNAT
    forwards have them; a proxy's or another namespace's show a dash); `verdicts_of` are the
    verdicts already worked out for this snapshot, else they are worked out here."""
    names, host = _names(snap), served_host(snap)
    found = {fr.id: fr for fr in (verdicts_of if verdicts_of is not None else reach(snap, listeners))}
    rows = []
    for pf in snap.port_forwards:
        if not _in_scope(pf.netns, host, scope):
            continue
        fr = found.get(portforward_id(pf)) if pf.via == "dnat" else None
        # the host's own connections to a port published for 127.0.0.1 only go to 127.0.0.1
        from_host = HOST if HOST in meant_sources(pf.host_ip) else LOOPBACK
        (outside, outside_class), (own, own_class) = _cell(fr, OUTSIDE), _cell(fr, from_host)
        rows.append(ForwardRow(names.get(pf.netns, pf.netns), pf.proto, host_side(pf), container_side(pf),
                               names.get(pf.container or "", "—"), pf.owner, pf.backend,
                               outside, own, outside_class, own_class))
    return rows


def _cell(fr: ForwardReach | None, source: str) -> tuple[str, str]:
    """A verdict's words and class; a source the forward is not published for is said so."""
    verdict = fr.verdict(source) if fr is not None else None
    if verdict is None:
        return "—", "muted"
    if source not in meant_sources(fr.forward.host_ip):
        return f"not published there (bound to {fr.forward.host_ip})", "muted"
    return verdict_text(verdict), "ok" if verdict.ok else "warn"


def matching(rows: Iterable, query: str) -> list:
    """Rows where every word of the query appears in some column."""
    words = query.lower().split()
    return [r for r in rows
            if all(any(w in str(v).lower() for v in r.__dict__.values()) for w in words)]


@bp.get("/")
def index() -> str:
    snap = runtime().source.snapshot
    q, table = request.args.get("q", ""), request.args.get("table", "nat")
    table = table if table in TABLE_CHOICES else "nat"
    scope = TableScope(every_namespace=request.args.get("every") == "1",
                  scaffolding=request.args.get("scaffolding") == "1")
    latest = verdicts.for_source(runtime().source).latest()
    listeners = latest.listeners if latest else None  # the ones the panels' verdicts read
    # the panels' own verdicts while they are of this snapshot: one verdict, worked out once
    known = latest.reach if latest is not None and latest.snapshot is snap else None
    return page_or_fragment("tables.html", "tables", q=q, table=table, scope=scope,
                            table_choices=TABLE_CHOICES, host=_names(snap).get(served_host(snap) or "", "?"),
                            rules=matching(rule_rows(snap, table, scope), q),
                            forwards=matching(forward_rows(snap, scope, listeners, known), q))
