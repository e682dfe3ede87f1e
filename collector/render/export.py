"""Snapshot -> JSON (the CLI/HTTP contract), Graphviz dot, and a human-readable tree. Pure."""
from __future__ import annotations

from collections.abc import Iterable

from bridgescope.collector.model import Interface, Namespace, Snapshot, to_plain


def to_json(snap: Snapshot) -> dict:
    """The `snapshot --json` object (docs/snapshot-json.md); ids come from kernel identities."""
    return {
        "host": snap.host,
        "taken_at": snap.taken_at,
        "namespaces": [_namespace_json(ns) for ns in snap.namespaces],
        "interfaces": [to_plain(i) for i in snap.interfaces],
        "routes": [to_plain(r) for r in snap.routes],
        "rules": [_rule_json(r) for r in snap.rules],
        "chains": [to_plain(c) for c in snap.chains],
        "port_forwards": [to_plain(p) for p in snap.port_forwards],
        "masquerades": [to_plain(m) for m in snap.masquerades],
        "warnings": list(snap.warnings),
    }


def _namespace_json(ns: Namespace) -> dict:
    return {
        "id": ns.id,
        "name": ns.name,
        "inode": ns.inode,
        "paths": list(ns.paths),
        "pids": list(ns.pids),
        "is_host": ns.is_host,
        "sysctls": dict(ns.sysctls),
    }


def _rule_json(rule) -> dict:
    plain = to_plain(rule)
    plain["matches"] = [{"option": o, "args": list(a), "negated": n} for o, a, n in rule.matches]
    plain["target_args"] = dict(rule.target_args)
    return plain


# ---- dot ------------------------------------------------------------------------------------

def to_dot(snap: Snapshot) -> str:
    """Graphviz: one cluster per namespace (as plotnetcfg draws), veth and bridge edges."""
    lines = ["graph bridgescope {", "  compound=true;", "  node [shape=box, fontsize=10];"]
    for index, ns in enumerate(snap.namespaces):
        lines += _dot_cluster(index, ns, snap.interfaces_in(ns.id))
    for a, b, style in _dot_edges(snap.interfaces):
        lines.append(f"  {_q(a)} -- {_q(b)} [{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_cluster(index: int, ns: Namespace, interfaces: Iterable[Interface]) -> list[str]:
    title = f"{ns.name} (host)" if ns.is_host else ns.name
    out = [f"  subgraph cluster_{index} {{", f"    label={_q(title)};",
           "    style=filled; fillcolor=\"#f4f4f4\";" if ns.is_host else "    style=rounded;"]
    for iface in interfaces:
        label = "\\n".join([f"{iface.name} ({iface.kind})", *iface.addresses, iface.state])
        color = "" if iface.state == "up" else ", color=grey"
        out.append(f"    {_q(iface.id)} [label={_q(label)}{color}];")
    out.append("  }")
    return out


def _dot_edges(interfaces: Iterable[Interface]) -> list[tuple[str, str, str]]:
    edges = []
    for iface in interfaces:
        if iface.peer and iface.id < iface.peer:
            edges.append((iface.id, iface.peer, "style=bold"))
        if iface.master:
            edges.append((iface.id, iface.master, "style=dashed"))
    return edges


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n") + '"'


# ---- tree -----------------------------------------------------------------------------------

def to_tree(snap: Snapshot) -> str:
    """bridge -> port -> peer@namespace, per namespace, host first; then what hangs nowhere."""
    by_id = {i.id: i for i in snap.interfaces}
    names = {ns.id: ns.name for ns in snap.namespaces}
    ports: dict[str, list[Interface]] = {}
    for iface in snap.interfaces:
        if iface.master:
            ports.setdefault(iface.master, []).append(iface)
    lines: list[str] = []
    for ns in snap.namespaces:
        lines.append(f"{ns.name}{'  [host]' if ns.is_host else ''}  ({ns.id})")
        for iface in snap.interfaces_in(ns.id):
            if iface.master:
                continue  # shown under its bridge
            lines.append("  " + _tree_line(iface, by_id, names))
            for port in ports.get(iface.id, ()):
                lines.append("    └ " + _tree_line(port, by_id, names))
        for route in (r for r in snap.routes if r.netns == ns.id and r.family == 4):
            via = f" via {route.gateway}" if route.gateway else ""
            lines.append(f"  route {route.dst}{via} dev {route.dev}")
    lines += _tree_nat(snap, names)
    lines += [f"warning: {w}" for w in snap.warnings]
    return "\n".join(lines) + "\n"


def _tree_line(iface: Interface, by_id: dict[str, Interface], names: dict[str, str]) -> str:
    text = f"{iface.name} {iface.kind} {iface.state}"
    if iface.addresses:
        text += " " + " ".join(iface.addresses)
    peer = by_id.get(iface.peer) if iface.peer else None
    if peer is not None:
        where = names.get(peer.netns, peer.netns)
        text += f"  ⇄ {peer.name}@{where}"
        if peer.addresses:
            text += " " + " ".join(peer.addresses)
    return text


def _tree_nat(snap: Snapshot, names: dict[str, str]) -> list[str]:
    lines = []
    for pf in snap.port_forwards:
        host_ip = pf.host_ip or "*"
        target = names.get(pf.container, "?") if pf.container else "?"
        lines.append(f"forward {pf.proto} {host_ip}:{pf.host_port} → {pf.to_ip}:{pf.to_port} "
                     f"({target}, {pf.owner}, in {names.get(pf.netns, pf.netns)})")
    for m in snap.masquerades:
        out = f" ! -o {m.out_not}" if m.out_not else ""
        lines.append(f"masquerade {m.source or 'any'}{out} ({m.owner}, in {names.get(m.netns, m.netns)})")
    return lines
