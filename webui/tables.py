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

from bridgescope.collector.model import PortForward, Rule, Snapshot
from bridgescope.plumbing.rules import SHARD_CHAINS, SHARD_TAG
from bridgescope.plumbing.state import TAG
from bridgescope.webui.app import runtime
from bridgescope.webui.pages import page_or_fragment

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
    status: str


def _names(snap: Snapshot) -> dict[str, str]:
    return {n.id: n.name for n in snap.namespaces}


@dataclass(frozen=True)
class Scope:
    """Which rows to list: the served host only (default) or every namespace; with or
    without bridgescope's shard scaffolding."""
    every_namespace: bool = False
    scaffolding: bool = False


def served_host(snap: Snapshot) -> str | None:
    host = snap.namespace(snap.host) if snap.host else snap.host_namespace()
    return host.id if host else None


def is_scaffolding(rule: Rule) -> bool:
    """A jump from one of our base chains into its shard (BRIDGESCOPE-DNAT -> -DNAT-0a)."""
    return rule.target in SHARD_CHAINS or rule.comment == f"{TAG}{SHARD_TAG}"


def _in_scope(netns: str, host: str | None, scope: Scope) -> bool:
    return scope.every_namespace or host is None or netns == host


def rule_rows(snap: Snapshot, table: str = "nat", scope: Scope = Scope()) -> list[RuleRow]:
    names, host = _names(snap), served_host(snap)
    return [RuleRow(names.get(r.netns, r.netns), r.backend, r.table, r.chain, r.text, r.owner,
                    r.packets, r.bytes)
            for r in snap.rules if (table == "all" or r.table == table)
            and _in_scope(r.netns, host, scope) and (scope.scaffolding or not is_scaffolding(r))]


def _status(pf: PortForward) -> str:
    problems = [msg for bad, msg in ((not pf.reachable, "not reached from PREROUTING"),
                                     (not pf.from_host, "not from the host itself"),
                                     (pf.forward_accept is False, "FORWARD drops it")) if bad]
    return "; ".join(problems) or "ok"


def host_side(pf: PortForward) -> str:
    return f"{pf.host_ip or '*'}:{pf.host_port}" + (f"-{pf.host_port_end}" if pf.host_port_end else "")


def container_side(pf: PortForward) -> str:
    return f"{pf.to_ip}:{pf.to_port}" + (f"-{pf.to_port_end}" if pf.to_port_end else "")


def forward_rows(snap: Snapshot, scope: Scope = Scope()) -> list[ForwardRow]:
    names, host = _names(snap), served_host(snap)
    rows = []
    for pf in snap.port_forwards:
        if not _in_scope(pf.netns, host, scope):
            continue
        rows.append(ForwardRow(names.get(pf.netns, pf.netns), pf.proto, host_side(pf), container_side(pf),
                               names.get(pf.container or "", "—"),
                               pf.owner, pf.backend, _status(pf)))
    return rows


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
    scope = Scope(every_namespace=request.args.get("every") == "1",
                  scaffolding=request.args.get("scaffolding") == "1")
    return page_or_fragment("tables.html", "tables", q=q, table=table, scope=scope,
                            table_choices=TABLE_CHOICES, host=_names(snap).get(served_host(snap) or "", "?"),
                            rules=matching(rule_rows(snap, table, scope), q),
                            forwards=matching(forward_rows(snap, scope), q))
