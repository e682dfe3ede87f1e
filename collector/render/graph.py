"""Snapshot -> Cytoscape elements with deterministic positions, and deltas between two such lists.

Layout (O(n), no iteration): the host namespace is a compound box in the middle with its
interfaces in a mini-grid (bridges first, then bridge ports in their peers' order); every
other namespace is a box on concentric rings around it, consecutive along the rings and
grouped by the host bridge its veth reaches, so a bridge's containers sit together. A
namespace's position depends only on its rank, so adding one at the end moves nothing else.
"""
from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Iterable

from bridgescope.collector.model import Interface, Masquerade, Namespace, PortForward, Snapshot

CELL_W, CELL_H = 130.0, 80.0  # one interface node and its label
SLOT = 330.0  # arc length one namespace box takes on a ring
RING_GAP = 300.0
MARGIN = 260.0


def to_elements(snap: Snapshot, *, show_loopback: bool = False) -> list[dict]:
    visible = [i for i in snap.interfaces if show_loopback or i.kind != "loopback"]
    by_id = {i.id: i for i in snap.interfaces}
    host = snap.host_namespace()
    pf_nodes = _portforward_nodes(snap, by_id)
    masq_nodes = _masquerade_nodes(snap)
    nodes = [_namespace_node(ns) for ns in snap.namespaces]
    ns_owner = {n["data"]["id"]: n["data"]["owner"] for n in nodes}
    nodes += [_interface_node(i, by_id, snap.host, ns_owner.get(i.netns, "unknown")) for i in visible]
    nodes += [n for n, _ in pf_nodes] + [n for n, _ in masq_nodes]
    positions = layout(snap, nodes, host)
    for node in nodes:
        x, y = positions.get(node["data"]["id"], (0.0, 0.0))
        node["position"] = {"x": round(x, 1), "y": round(y, 1)}
    shown = {i.id for i in visible}
    edges = _interface_edges(visible, shown, by_id) + [e for _, e in pf_nodes if e] + [e for _, e in masq_nodes if e]
    return nodes + edges


# ---- nodes ----------------------------------------------------------------------------------

def _namespace_node(ns: Namespace) -> dict:
    return {"group": "nodes", "data": {
        "id": ns.id, "kind": "namespace", "label": ns.name, "parent": None, "is_host": ns.is_host,
        "owner": namespace_owner(ns), "inode": ns.inode, "paths": list(ns.paths),
        "ip_forward": ns.sysctl("net.ipv4.ip_forward"),
    }}


def _interface_node(iface: Interface, by_id: dict[str, Interface], host: str | None, ns_owner: str) -> dict:
    master = by_id.get(iface.master) if iface.master else None
    owner = interface_owner(iface, master)
    return {"group": "nodes", "data": {
        "id": iface.id, "kind": iface.kind, "label": iface.name, "parent": iface.netns,
        "is_host": iface.netns == host, "owner": ns_owner if owner == "unknown" else owner, "state": iface.state,
        "addresses": list(iface.addresses), "mac": iface.mac, "mtu": iface.mtu, "ifindex": iface.ifindex,
        "master": iface.master, "peer": iface.peer, "hairpin": iface.hairpin,
    }}


def portforward_id(pf: PortForward) -> str:
    return f"pf:{pf.netns}:{pf.proto}:{pf.host_ip or '*'}:{pf.host_port}"


def _portforward_nodes(snap: Snapshot, by_id: dict[str, Interface]) -> list[tuple[dict, dict | None]]:
    if not snap.port_forwards:
        return []
    out, seen = [], set()
    owner_of_ip = _ip_index(snap.interfaces)
    for pf in snap.port_forwards:
        node_id = portforward_id(pf)
        if node_id in seen:
            continue  # the same forward written by two backends/families: one node
        seen.add(node_id)
        host_part = f"{pf.host_ip}:" if pf.host_ip else ""
        node = {"group": "nodes", "data": {
            "id": node_id, "kind": "portforward", "label": f"{pf.proto} {host_part}{pf.host_port} → {pf.to_port}",
            "parent": pf.netns, "is_host": False, "owner": pf.owner, "proto": pf.proto,
            "host_ip": pf.host_ip, "host_port": pf.host_port, "to_ip": pf.to_ip, "to_port": pf.to_port,
            "container": pf.container, "backend": pf.backend, "reachable": pf.reachable,
        }}
        target = pf.to_interface or owner_of_ip.get(pf.to_ip)
        edge = _edge(f"edge:{node_id}", node_id, target, "portforward", pf.owner) if target in by_id else None
        out.append((node, edge))
    return out


def masquerade_id(m: Masquerade) -> str:
    return f"masq:{m.netns}:{m.source or '*'}:{m.out_not or '*'}"


def _masquerade_nodes(snap: Snapshot) -> list[tuple[dict, dict | None]]:
    out, seen = [], set()
    for m in snap.masquerades:
        node_id = masquerade_id(m)
        if node_id in seen:
            continue
        seen.add(node_id)
        label = f"MASQUERADE {m.source or 'any'}" + (f" ! -o {m.out_not}" if m.out_not else "")
        node = {"group": "nodes", "data": {
            "id": node_id, "kind": "masquerade", "label": label, "parent": m.netns, "is_host": False,
            "owner": m.owner, "source": m.source, "out_not": m.out_not, "backend": m.backend,
        }}
        bridge = _bridge_for_masquerade(m, snap.interfaces)
        edge = _edge(f"edge:{node_id}", bridge.id, node_id, "masquerade", m.owner) if bridge else None
        out.append((node, edge))
    return out


def _bridge_for_masquerade(m: Masquerade, interfaces: Iterable[Interface]) -> Interface | None:
    """The bridge the masqueraded subnet lives on: its way out goes through this rule."""
    candidates = [i for i in interfaces if i.netns == m.netns and i.kind == "bridge"]
    if m.out_not:
        named = [i for i in candidates if i.name == m.out_not]
        if named:
            return named[0]
    if m.source:
        for iface in candidates:
            if any(_in_subnet(addr, m.source) for addr in iface.addresses):
                return iface
    return None


def _ip_index(interfaces: Iterable[Interface]) -> dict[str, str]:
    """address -> id of the first interface holding it (loopback addresses are everywhere)."""
    index: dict[str, str] = {}
    for iface in interfaces:
        if iface.kind != "loopback":
            for cidr in iface.addresses:
                index.setdefault(cidr.split("/", 1)[0], iface.id)
    return index


def _in_subnet(cidr: str, subnet: str) -> bool:
    try:
        return ipaddress.ip_interface(cidr).ip in ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return False


# ---- owners ---------------------------------------------------------------------------------

def namespace_owner(ns: Namespace) -> str:
    for path in ns.paths:
        if "/docker/netns/" in path:
            return "docker"
        base = path.rsplit("/", 1)[-1]
        if base.startswith("netns-"):
            return "podman"
        if base.startswith("cni-"):
            return "cni"
    return "unknown"


def interface_owner(iface: Interface, master: Interface | None = None) -> str:
    if iface.alias and iface.alias.startswith("bridgescope"):
        return "bridgescope"
    name = master.name if master is not None else iface.name
    if master is not None and master.alias and master.alias.startswith("bridgescope"):
        return "bridgescope"
    if name == "docker0" or (name.startswith("br-") and len(name) == 15):
        return "docker"
    if name.startswith("podman") or name.startswith("cni-podman"):
        return "podman"
    if name.startswith("cni"):
        return "cni"
    return "unknown"


# ---- edges ----------------------------------------------------------------------------------

def _edge(edge_id: str, source: str, target: str, kind: str, owner: str = "unknown") -> dict:
    return {"group": "edges", "data": {"id": edge_id, "source": source, "target": target,
                                       "kind": kind, "owner": owner}}


def _interface_edges(visible: list[Interface], shown: set[str], by_id: dict[str, Interface]) -> list[dict]:
    edges = []
    for iface in visible:
        master = by_id.get(iface.master) if iface.master else None
        if iface.peer in shown and iface.id < iface.peer:
            peer = by_id[iface.peer]
            owner = max(interface_owner(iface, master),
                        interface_owner(peer, by_id.get(peer.master) if peer.master else None),
                        key=lambda o: o != "unknown")
            edges.append(_edge(f"veth:{iface.id}--{iface.peer}", iface.id, iface.peer, "veth", owner))
        if iface.master in shown:
            edges.append(_edge(f"member:{iface.id}", iface.id, iface.master, "member",
                               interface_owner(iface, master)))
    return edges


# ---- layout ---------------------------------------------------------------------------------

def layout(snap: Snapshot, nodes: list[dict], host: Namespace | None) -> dict[str, tuple[float, float]]:
    children: dict[str, list[dict]] = {}
    for node in nodes:
        parent = node["data"].get("parent")
        if parent:
            children.setdefault(parent, []).append(node)
    order = namespace_order(snap)
    rank = {ns_id: i for i, ns_id in enumerate(order)}
    positions: dict[str, tuple[float, float]] = {}
    host_radius = 0.0
    if host is not None:
        kids = sorted(children.get(host.id, []), key=lambda n: _host_child_key(n, snap, rank))
        positions.update(grid(kids, (0.0, 0.0)))
        positions[host.id] = (0.0, 0.0)
        cols, rows = grid_shape(len(kids))
        host_radius = math.hypot(cols * CELL_W, rows * CELL_H) / 2
    # Rounded up to whole rings so a host growing by a port or two moves no container.
    radius0 = math.ceil((host_radius + MARGIN) / RING_GAP) * RING_GAP
    for ns_id, (x, y) in ring_slots(order, radius0).items():
        positions[ns_id] = (x, y)
        positions.update(grid(sorted(children.get(ns_id, []), key=_child_key), (x, y)))
    return positions


def namespace_order(snap: Snapshot) -> list[str]:
    """Non-host namespaces, grouped by the host bridge their veth reaches, then by name."""
    host = snap.host
    bridges = [i.id for i in snap.interfaces if i.netns == host and i.kind == "bridge"]
    bridge_rank = {b: n for n, b in enumerate(bridges)}
    by_id = {i.id: i for i in snap.interfaces}
    group: dict[str, int] = {}
    for iface in snap.interfaces:
        peer = by_id.get(iface.peer) if iface.peer else None
        if peer is not None and peer.netns == host and iface.netns != host and peer.master in bridge_rank:
            rank = bridge_rank[peer.master]
            group[iface.netns] = min(rank, group.get(iface.netns, rank))
    others = [ns for ns in snap.namespaces if not ns.is_host]
    return [ns.id for ns in sorted(others, key=lambda ns: (group.get(ns.id, len(bridges)), ns.name, ns.id))]


def ring_slots(order: list[str], radius0: float) -> dict[str, tuple[float, float]]:
    slots, ring, index_in_ring = {}, 0, 0
    capacity = _ring_capacity(radius0)
    for ns_id in order:
        if index_in_ring == capacity:
            ring, index_in_ring = ring + 1, 0
            capacity = _ring_capacity(radius0 + ring * RING_GAP)
        radius = radius0 + ring * RING_GAP
        angle = -math.pi / 2 + 2 * math.pi * index_in_ring / capacity
        slots[ns_id] = (radius * math.cos(angle), radius * math.sin(angle))
        index_in_ring += 1
    return slots


def _ring_capacity(radius: float) -> int:
    return max(6, int(2 * math.pi * radius // SLOT))


def grid_shape(count: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(count)))
    return cols, max(1, math.ceil(count / cols))


def grid(nodes: list[dict], center: tuple[float, float]) -> dict[str, tuple[float, float]]:
    cols, rows = grid_shape(len(nodes))
    x0 = center[0] - (cols - 1) * CELL_W / 2
    y0 = center[1] - (rows - 1) * CELL_H / 2
    return {node["data"]["id"]: (x0 + (i % cols) * CELL_W, y0 + (i // cols) * CELL_H)
            for i, node in enumerate(nodes)}


KIND_RANK = {"bridge": 0, "physical": 1, "vxlan": 2, "masquerade": 3, "portforward": 4}


def _child_key(node: dict) -> tuple:
    data = node["data"]
    return (KIND_RANK.get(data["kind"], 5), data.get("ifindex") or 0, data["id"])


def _host_child_key(node: dict, snap: Snapshot, rank: dict[str, int]) -> tuple:
    """Ports follow their peers' ring order so veth edges fan out instead of crossing."""
    data = node["data"]
    peer = data.get("peer")
    peer_ns = peer.split("/")[0] if peer else None
    return (KIND_RANK.get(data["kind"], 5), data.get("master") or "", rank.get(peer_ns, -1),
            data.get("ifindex") or 0, data["id"])


# ---- incremental rebuild ------------------------------------------------------------------

NAT_KINDS = ("portforward", "masquerade")


def patch_elements(old: list[dict], snap: Snapshot, ns_ids: Iterable[str], *,
                   show_loopback: bool = False, only: Collection[str] | None = None
                   ) -> tuple[list[dict], dict] | None:
    """Rebuild only what belongs to `ns_ids` (plus the few NAT nodes), keeping every position.

    Returns (elements, delta): the elements to_elements(snap) would give, except that nodes
    which appeared are placed beside their siblings instead of laying the namespace out anew;
    or None when a namespace appeared or anything the layout depends on changed: then the
    caller lays everything out again with to_elements. `only` (interface ids) narrows the
    rebuild to those interfaces and their edges, besides the namespaces' own nodes: a change
    to one link of a host with a thousand ports costs one link.
    """
    touched = set(ns_ids)
    only = set(only) if only is not None else None
    fresh = _fresh_elements(snap, touched, show_loopback, only)
    stale = {e["data"]["id"]: e for e in old if _belongs(e, touched, only)}
    added = [e for i, e in fresh.items() if i not in stale]
    if any(e["data"]["kind"] == "namespace" for e in added):
        return None
    for element_id, element in fresh.items():
        before = stale.get(element_id)
        if element["group"] == "nodes" and before is not None:
            if _layout_key(element) != _layout_key(before):
                return None
            element["position"] = before["position"]
    _place_added([e for e in added if e["group"] == "nodes"], old)
    removed = [i for i in stale if i not in fresh]
    changed = [e for i, e in fresh.items() if i in stale and e != stale[i]]
    if not (added or removed or changed):
        return old, {"added": [], "removed": [], "changed": []}
    replaced = {e["data"]["id"]: e for e in changed}
    gone = set(removed)
    kept = [replaced.get(e["data"]["id"], e) for e in old if e["data"]["id"] not in gone]
    nodes = [e for e in kept if e["group"] == "nodes"] + [e for e in added if e["group"] == "nodes"]
    edges = [e for e in kept if e["group"] == "edges"] + [e for e in added if e["group"] == "edges"]
    return nodes + edges, {"added": added, "removed": removed, "changed": changed}


def _place_added(nodes: list[dict], old: list[dict]) -> None:
    """A node that appeared in a namespace goes on a new row under its siblings; nothing else
    moves (the next full layout tidies up)."""
    parents = {n["data"]["parent"] for n in nodes}
    below: dict[str, tuple[float, float]] = {}
    for e in old:
        parent = e["data"].get("parent") if e["group"] == "nodes" else None
        if parent in parents:
            x, y = e["position"]["x"], e["position"]["y"]
            left, bottom = below.get(parent, (x, y))
            below[parent] = (min(left, x), max(bottom, y))
    centers = {e["data"]["id"]: e["position"] for e in old if e["data"]["id"] in parents}
    count: dict[str, int] = {}
    for node in nodes:
        parent = node["data"]["parent"]
        k = count[parent] = count.get(parent, -1) + 1
        if parent in below:
            left, bottom = below[parent]
            node["position"] = {"x": round(left + k * CELL_W, 1), "y": round(bottom + CELL_H, 1)}
        else:
            center = centers.get(parent, {"x": 0.0, "y": 0.0})
            node["position"] = {"x": round(center["x"] + k * CELL_W, 1), "y": center["y"]}


def _fresh_elements(snap: Snapshot, touched: set[str], show_loopback: bool,
                    only: set[str] | None = None) -> dict[str, dict]:
    by_id = {i.id: i for i in snap.interfaces}
    shown = {i.id for i in snap.interfaces if show_loopback or i.kind != "loopback"}
    if only is None:
        visible = [i for i in snap.interfaces if i.netns in touched and i.id in shown]
    else:
        visible = [by_id[i] for i in sorted(only) if i in shown]
    namespaces = [ns for ns in snap.namespaces if ns.id in (touched if only is None else touched | {i.netns for i in visible})]
    ns_nodes = [_namespace_node(ns) for ns in namespaces]
    ns_owner = {n["data"]["id"]: n["data"]["owner"] for n in ns_nodes}
    nodes = [n for n in ns_nodes if n["data"]["id"] in touched]
    nodes += [_interface_node(i, by_id, snap.host, ns_owner[i.netns]) for i in visible]
    # a veth edge is emitted by its lower-id end, a member edge by the port: either may be left out
    inside = (lambda i: i.netns in touched) if only is None else (lambda i: i.id in only)
    far_ends = [by_id[i.peer] for i in visible if i.peer in shown and not inside(by_id[i.peer])]
    if only is not None:
        far_ends += [i for i in snap.interfaces if i.master in only and i.id in shown and i.id not in only]
    edges = [e for e in _interface_edges(visible + far_ends, shown, by_id)
             if _edge_inside(e, touched, only)]
    nat = _portforward_nodes(snap, by_id) + _masquerade_nodes(snap)
    nodes += [n for n, _ in nat]
    edges += [e for _, e in nat if e]
    return {e["data"]["id"]: e for e in nodes + edges}


def _belongs(element: dict, touched: set[str], only: set[str] | None = None) -> bool:
    data = element["data"]
    if data["kind"] in NAT_KINDS:
        return True
    if element["group"] == "nodes":
        if data["kind"] == "namespace":
            return data["id"] in touched
        return data["parent"] in touched if only is None else data["id"] in only
    return _edge_inside(element, touched, only)


def _edge_inside(edge: dict, touched: set[str], only: set[str] | None) -> bool:
    data = edge["data"]
    if only is not None:
        return data["source"] in only or data["target"] in only
    return _interface_ns(data["source"]) in touched or _interface_ns(data["target"]) in touched


def _interface_ns(element_id: str) -> str:
    return element_id.split("/", 1)[0]


def _layout_key(node: dict) -> tuple:
    data = node["data"]
    return (data["kind"], data.get("label") if data["kind"] == "namespace" else None,
            data.get("master"), data.get("peer"), data.get("parent"))


# ---- deltas ---------------------------------------------------------------------------------

def diff_elements(old: list[dict], new: list[dict]) -> dict:
    """What turns `old` into `new`: whole new/changed elements, ids of removed ones."""
    before = {e["data"]["id"]: e for e in old}
    after_ids = set()
    added, changed = [], []
    for element in new:
        element_id = element["data"]["id"]
        after_ids.add(element_id)
        previous = before.get(element_id)
        if previous is None:
            added.append(element)
        elif previous != element:
            changed.append(element)
    removed = [e["data"]["id"] for e in old if e["data"]["id"] not in after_ids]
    return {"added": added, "removed": removed, "changed": changed}
