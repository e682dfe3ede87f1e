"""iptables-legacy through python-iptables, in one worker process per namespace.

python-iptables keeps process-wide table caches and is not thread-safe, so each change runs
in a fresh `python -I -m bridgescope.plumbing.legacy NSPATH` process that joins the namespace
BEFORE importing iptc, holds /run/xtables.lock (libiptc ignores it; iptables-legacy honours
it), applies the whole batch with autocommit off and commits each table once.
"""
from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from dataclasses import asdict
from typing import Any

from bridgescope.collector.kernel import tools
from bridgescope.collector.kernel.setns import enter
from bridgescope.plumbing.errors import PlumbingError
from bridgescope.plumbing.rules import TABLES, Change, FwRule

XTABLES_LOCK = "/run/xtables.lock"


def operations(change: Change) -> list[dict[str, Any]]:
    """The change as the worker's batch, in the order a restore would apply it."""
    ops: list[dict[str, Any]] = []
    ops += [{"op": "chain", "table": t, "chain": c} for t, c in change.new_chains]
    ops += [{"op": "flush", "table": t, "chain": c} for t, c in change.flush_chains]
    ops += [{"op": "unjump", "rule": asdict(r)} for r in change.del_jumps]
    ops += [{"op": "delete", "rule": asdict(r)} for r in change.delete]
    ops += [{"op": "append", "rule": asdict(r)} for r in change.add]
    ops += [{"op": "jump", "rule": asdict(r)} for r in change.add_jumps]
    ops += [{"op": "drop_chain", "table": t, "chain": c} for t, c in change.drop_chains]
    return ops


def apply(netns_path: str, change: Change) -> None:
    if change.is_empty():
        return
    proc = subprocess.run(tools.python_module("bridgescope.plumbing.legacy", netns_path),
                          input=json.dumps(operations(change)), capture_output=True, text=True,
                          timeout=120, env=tools.ENV)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise PlumbingError("apply the iptables-legacy rules",
                            lines[-1] if lines else f"worker exited {proc.returncode}")


# --- the worker side (runs in its own process) ---------------------------------------------



def _iptc_rule(iptc: Any, r: FwRule) -> Any:
    rule = iptc.Rule()
    for attr, value, neg in (("src", r.src, r.src_not), ("dst", r.dst, r.dst_not),
                             ("in_interface", r.in_if, r.in_not),
                             ("out_interface", r.out_if, r.out_not)):
        if value is not None:
            setattr(rule, attr, ("!" if neg else "") + value)
    if r.proto:
        rule.protocol = r.proto
        if r.dport is not None:
            rule.create_match(r.proto).dport = str(r.dport)
    if r.dst_type:
        rule.create_match("addrtype").dst_type = r.dst_type
    if r.src_type:
        rule.create_match("addrtype").src_type = r.src_type
    if r.ctstate:
        rule.create_match("conntrack").ctstate = r.ctstate
    rule.create_match("comment").comment = r.comment
    target = rule.create_target(r.target)
    if r.to_destination:
        target.to_destination = r.to_destination
    return rule


def _has_jump(chain: Any, r: FwRule) -> Any:
    for existing in chain.rules:
        if existing.target.name == r.target and any(
                m.name == "comment" and m.comment == r.comment for m in existing.matches):
            return existing
    return None


def _run(ops: list[dict[str, Any]]) -> None:
    import iptc  # only now: the process is already inside the namespace

    used = {op["rule"]["table"] if "rule" in op else op["table"] for op in ops}
    tables = {name: iptc.Table(name) for name in TABLES if name in used}
    for table in tables.values():
        table.autocommit = False
        table.refresh()
    for op in ops:
        if "rule" in op:
            r = FwRule(**op["rule"])
            table = tables[r.table]
            chain = iptc.Chain(table, r.chain)
        else:
            table = tables[op["table"]]
        kind = op["op"]
        if kind == "chain":
            if not table.is_chain(op["chain"]):
                table.create_chain(op["chain"])
        elif kind == "flush":
            if table.is_chain(op["chain"]):
                iptc.Chain(table, op["chain"]).flush()
            else:
                table.create_chain(op["chain"])
        elif kind == "drop_chain":
            if table.is_chain(op["chain"]):
                c = iptc.Chain(table, op["chain"])
                c.flush()
                c.delete()
        elif kind == "jump":
            if _has_jump(chain, r) is None:
                chain.insert_rule(_iptc_rule(iptc, r))
        elif kind == "unjump":
            found = _has_jump(chain, r)
            if found is not None:
                chain.delete_rule(found)
        elif kind == "append":
            chain.append_rule(_iptc_rule(iptc, r))
        elif kind == "delete":
            try:
                chain.delete_rule(_iptc_rule(iptc, r))
            except iptc.IPTCError:
                pass  # already gone: deleting is idempotent
    for table in tables.values():
        table.commit()


def main(argv: list[str]) -> int:
    enter(argv[1])
    ops = json.load(sys.stdin)
    with open(XTABLES_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _run(ops)
        except Exception as err:
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
