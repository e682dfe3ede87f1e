"""Tables for when a graph is the wrong view: NAT rules and port forwards, filterable.

The filter is plain text matched (case-insensitively) against every column, so "8080",
"docker", "172.17.0.2" or a namespace name all work; htmx asks again as the user types and
swaps only the table body.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flask import Blueprint, request

from bridgescope.collector.model import PortForward, Snapshot
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


def rule_rows(snap: Snapshot, table: str = "nat") -> list[RuleRow]:
    names = _names(snap)
    return [RuleRow(names.get(r.netns, r.netns), r.backend, r.table, r.chain, r.text, r.owner,
                    r.packets, r.bytes)
            for r in snap.rules if table == "all" or r.table == table]


def _status(pf: PortForward) -> str:
    problems = [msg for bad, msg in ((not pf.reachable, "not reached from PREROUTING"),
                                     (not pf.from_host, "not from the host itself"),
                                     (pf.forward_accept is False, "FORWARD drops it")) if bad]
    return "; ".join(problems) or "ok"


def host_side(pf: PortForward) -> str:
    return f"{pf.host_ip or '*'}:{pf.host_port}" + (f"-{pf.host_port_end}" if pf.host_port_end else "")


def container_side(pf: PortForward) -> str:
    return f"{pf.to_ip}:{pf.to_port}" + (f"-{pf.to_port_end}" if pf.to_port_end else "")


def forward_rows(snap: Snapshot) -> list[ForwardRow]:
    names = _names(snap)
    rows = []
    for pf in snap.port_forwards:
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
    return page_or_fragment("tables.html", "tables", q=q, table=table,
                            table_choices=TABLE_CHOICES,
                            rules=matching(rule_rows(snap, table), q),
                            forwards=matching(forward_rows(snap), q))
