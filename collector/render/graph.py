"""Snapshot -> Cytoscape elements with deterministic positions, and deltas between two such lists.

The picture is the classic Docker bridge diagram. Inside the host box, top to bottom: the
uplinks (physical NICs, the host's addresses); each bridge as a box of its own, its
MASQUERADE drawn on an edge from the bridge up to the uplink it leaves through; beneath each
bridge its containers in a grid, each a box named after the container, holding its eth0; the
host-side veth port sits just left of the box, so a veth pair is a short edge; a port forward
is a badge inside the container's box with a short arrow to the interface it reaches. Other
namespaces stand in a column left of the host box, which grows to the right and down.

Positions are a pure function of (snapshot, slots): slots remember, by identity, each bridge's
column count and each container's cell, so a container arriving or leaving moves nothing else
and every page (reloads, other tabs, the walk's follow view) gets the same picture. The
serving process keeps the slots of each host it has drawn (`remembered_slots`), and `serve`
keeps them in a file too (`keep_slots_in`), so a restart draws the same picture.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Collection, Container, Iterable, Mapping

from bridgescope.collector.model import (
    Interface,
    Masquerade,
    Namespace,
    PortForward,
    Snapshot,
    masquerade_id,
    portforward_id,
)
from bridgescope.collector.render.drawing import Drawing
from bridgescope.collector.render.layout import Picture, Scope, changed_keys, place, plan
from bridgescope.collector.render.slots import Slots, remember, remembered_slots


def to_elements(snap: Snapshot, *, show_loopback: bool = False, slots: Slots | None = None) -> list[dict]:
    """The elements; without `slots`, this process's memory of the host's slots is used and updated."""
    return drawn(snap, show_loopback=show_loopback, slots=slots)[0]


def drawn(snap: Snapshot, *, show_loopback: bool = False, slots: Slots | None = None) -> tuple[list[dict], Picture]:
    """to_elements, with the plan they were drawn from (what patch_elements starts from next)."""
    host_key = snap.host or ""
    elements, picture = _draw(snap, remembered_slots(host_key) if slots is None else slots, show_loopback)
    if slots is None:
        remember(host_key, picture.slots)
    return elements, picture


def build_elements(snap: Snapshot, slots: Slots, *, show_loopback: bool = False) -> tuple[list[dict], Slots]:
    elements, picture = _draw(snap, slots, show_loopback)
    return elements, picture.slots


def _draw(snap: Snapshot, slots: Slots, show_loopback: bool) -> tuple[list[dict], Picture]:
    visible = [i for i in snap.interfaces if show_loopback or i.kind != "loopback"]
    by_id = {i.id: i for i in snap.interfaces}
    picture = plan(snap, slots)
    pf_nodes = _portforward_nodes(snap, by_id, picture)
    nodes = [_namespace_node(ns, picture) for ns in snap.namespaces]
    ns_owner = {n["data"]["id"]: n["data"]["owner"] for n in nodes}
    nodes += [_interface_node(i, by_id, snap.host, ns_owner.get(i.netns, "unknown"), picture) for i in visible]
    nodes += [n for n, _ in pf_nodes]
    positions = place(snap, picture, nodes)
    for node in nodes:
        x, y = positions.get(node["data"]["id"], (0.0, 0.0))
        node["position"] = {"x": round(x, 1), "y": round(y, 1)}
    shown = {i.id for i in visible}
    edges = _interface_edges(visible, shown, by_id) + [e for _, e in pf_nodes if e] + _masquerade_edges(snap, picture)
    return nodes + edges, picture

# ---- nodes ----------------------------------------------------------------------------------

def _namespace_node(ns: Namespace, pic: Picture) -> dict:
    home = pic.home.get(ns.id)
    return {"group": "nodes", "data": {
        "id": ns.id, "kind": "namespace", "label": pic.names.get(ns.id, ns.name), "ns_name": ns.name,
        "parent": home, "is_host": ns.is_host, "container": home is not None, "related": ns.id in pic.related,
        "owner": namespace_owner(ns), "inode": ns.inode, "paths": list(ns.paths),
        "ip_forward": ns.sysctl("net.ipv4.ip_forward"),
    }}


def _interface_node(iface: Interface, by_id: dict[str, Interface], host: str | None, ns_owner: str,
                    pic: Picture) -> dict:
    master = by_id.get(iface.master) if iface.master else None
    owner = interface_owner(iface, master)
    return {"group": "nodes", "data": {
        "id": iface.id, "kind": iface.kind, "label": iface.name, "parent": pic.parent.get(iface.id, iface.netns),
        "netns": iface.netns, "port": iface.id in pic.parent, "uplink": iface.id == pic.way_out,
        "side": iface.netns != host and iface.netns not in pic.home,
        "is_host": iface.netns == host, "owner": ns_owner if owner == "unknown" else owner, "state": iface.state,
        "addresses": list(iface.addresses), "mac": iface.mac, "mtu": iface.mtu, "ifindex": iface.ifindex,
        "master": iface.master, "peer": iface.peer, "hairpin": iface.hairpin,
    }}


def badge_label(pf: PortForward) -> str:
    """Where it listens (any host address: *) and where it goes, as a badge reads it."""
    return f"{pf.proto} {pf.host_ip or '*'}:{pf.host_port}\n→ :{pf.to_port}"


def _portforward_nodes(snap: Snapshot, by_id: dict[str, Interface], pic: Picture) -> list[tuple[dict, dict | None]]:
    if not snap.port_forwards:
        return []
    out, seen = [], set()
    owner_of_ip = _ip_index(snap.interfaces, {pf.to_ip for pf in snap.port_forwards if not pf.to_interface})
    for pf in snap.port_forwards:
        node_id = portforward_id(pf)
        if node_id in seen:
            continue  # the same forward written by two backends/families: one node
        seen.add(node_id)
        target = pf.to_interface or owner_of_ip.get(pf.to_ip)
        inside = by_id[target].netns if target in by_id else None
        node = {"group": "nodes", "data": {
            "id": node_id, "kind": "portforward", "label": badge_label(pf),
            "parent": inside if inside in pic.home else pf.netns, "netns": pf.netns,
            "is_host": False, "owner": pf.owner, "proto": pf.proto,
            "host_ip": pf.host_ip, "host_port": pf.host_port, "to_ip": pf.to_ip, "to_port": pf.to_port,
            "container": pf.container, "backend": pf.backend,
        }}
        edge = _edge(f"edge:{node_id}", node_id, target, "portforward", pf.owner) if target in by_id else None
        out.append((node, edge))
    return out


def _masquerade_edges(snap: Snapshot, pic: Picture) -> list[dict]:
    """A bridge's way out: an edge from the bridge up to the uplink it leaves through (a loop
    on the bridge while the host has no uplink). The rules that serve a forward (hairpin,
    localhost) are in that forward's panel instead."""
    out, seen = [], set()
    if not snap.masquerades:
        return out
    names = {i.name: i.id for i in snap.interfaces if i.netns == pic.host}
    bridges: dict[str, list[Interface]] = {}  # one pass for every rule: a host holds many of both
    for iface in snap.interfaces:
        if iface.kind == "bridge":
            bridges.setdefault(iface.netns, []).append(iface)
    for m in snap.masquerades:
        edge_id = masquerade_id(m)
        bridge = _bridge_for_masquerade(m, bridges.get(m.netns, ()))
        if edge_id in seen or bridge is None or not is_way_out(m):
            continue
        seen.add(edge_id)
        edge = _edge(edge_id, bridge.id, names.get(m.out or "", pic.way_out) or bridge.id, "masquerade", m.owner)
        edge["data"].update(label=f"MASQUERADE {m.source or 'any'}", source_net=m.source, out_not=m.out_not,
                            backend=m.backend, rule=m.rule_text)
        out.append(edge)
    return out


def is_way_out(m: Masquerade) -> bool:
    """A subnet's MASQUERADE (not one address's hairpin, not localhost's, not "any")."""
    try:
        net = ipaddress.ip_network(m.source or "", strict=False)
    except ValueError:
        return False
    return net.prefixlen < net.max_prefixlen and not net.is_loopback


def served_masquerades(snap: Snapshot, pf: PortForward) -> tuple[Masquerade, ...]:
    """The MASQUERADE rules that exist for this forward: the hairpin (the container's own
    address as source) and localhost publishing (loopback or any source)."""
    out = []
    for m in snap.masquerades:
        if m.netns != pf.netns or is_way_out(m):
            continue
        source = (m.source or "").split("/", 1)[0]
        if source in ("", pf.to_ip) or source.startswith("127."):
            out.append(m)
    return out and tuple(dict.fromkeys(out)) or ()


def _bridge_for_masquerade(m: Masquerade, candidates: list[Interface]) -> Interface | None:
    """The bridge the masqueraded subnet lives on (among the bridges of its namespace): its way
    out goes through this rule."""
    if m.out_not:
        named = [i for i in candidates if i.name == m.out_not]
        if named:
            return named[0]
    if m.source:
        for iface in candidates:
            if any(_in_subnet(addr, m.source) for addr in iface.addresses):
                return iface
    return None


def _ip_index(interfaces: Iterable[Interface], wanted: Container[str]) -> dict[str, str]:
    """address -> id of the first interface holding it (loopback addresses are everywhere), for
    the addresses wanted."""
    index: dict[str, str] = {}
    if not wanted:
        return index
    for iface in interfaces:
        if iface.addresses and iface.kind != "loopback":
            for cidr in iface.addresses:
                ip = cidr.split("/", 1)[0]
                if ip in wanted:
                    index.setdefault(ip, iface.id)
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


def _interface_edges(visible: list[Interface], shown: Container[str], by_id: dict[str, Interface]) -> list[dict]:
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


def patch_elements(old: list[dict], before: Picture | None, snap: Snapshot, ns_ids: Iterable[str], *,
                   only: Collection[str] = (), whole: Collection[str] = (), show_loopback: bool = False
                   ) -> tuple[list[dict], dict, Picture]:
    """Redraw only what a change touched: the nodes of `ns_ids`, the interfaces in `only`, every
    element of the namespaces in `whole` (new, gone or rebuilt), the NAT elements, and whatever
    the new plan says differently from `before` (the plan `old` was drawn from).

    Returns (elements, delta, plan), equal by id to to_elements(snap) and diff_elements(old, that).
    Positions are recomputed only when nodes came or went, a node changed parent, or the plan's
    shape changed; then only the nodes that moved join the delta. Without `before`, everything
    is drawn anew.
    """
    host_key = snap.host or ""
    if before is None or before.host != _host_id(snap):
        new, picture = drawn(snap, show_loopback=show_loopback)
        return new, diff_elements(old, new), picture
    ns_ids, whole = set(ns_ids), set(whole)
    inside = [i.id for i in snap.interfaces if i.netns in whole] if whole else []
    by_id = {i.id: i for i in snap.interfaces}  # one map for the plan and the redraw
    picture = plan(snap, remembered_slots(host_key), before, ifaces=[*only, *inside], namespaces={*ns_ids, *whole},
                   by_id=by_id)
    remember(host_key, picture.slots)
    whole |= changed_keys(before.home, picture.home)
    nodes = ns_ids | whole | changed_keys(before.names, picture.names) | (before.related ^ picture.related)
    ifaces = set(only) | changed_keys(before.parent, picture.parent)
    if before.way_out != picture.way_out:
        ifaces |= {before.way_out, picture.way_out} - {None}
    fresh = _fresh_elements(snap, picture, nodes, ifaces, whole, show_loopback, by_id)
    was = before.drawing if before.drawing.size() == len(old) else Drawing.of(old)
    stale = was.touching(nodes, ifaces, whole)
    added = [e for i, e in fresh.items() if was.get(i) is None]
    removed = [i for i in stale if i not in fresh]
    changed: dict[str, dict] = {}
    relayout = any(e["group"] == "nodes" for e in added) or any(i in was.nodes for i in removed)
    relayout = relayout or _shape(before) != _shape(picture)
    for element_id, element in fresh.items():
        previous = was.get(element_id)
        if previous is None:
            continue
        if element["group"] == "nodes":
            relayout = relayout or _layout_key(element) != _layout_key(previous)
            element["position"] = previous["position"]
        if element != previous:
            changed[element_id] = element
    picture.drawing = drawing = was.patched(added, [was.get(i) for i in removed], changed)
    if relayout:
        touched = [e for e in added if e["group"] == "nodes"] + \
            [was.nodes[i] for i in removed if i in was.nodes] + \
            [e for i, e in changed.items() if e["group"] == "nodes"] + \
            [was.nodes[i] for i in changed if i in was.nodes]
        _placed(snap, picture, changed, {e["data"]["id"] for e in added}, scope_of(before, picture, touched))
    else:  # nothing that sizes a cell or fills a box changed
        picture.load, picture.grid, picture.fullest = before.load, before.grid, before.fullest
    delta = {"added": added, "removed": removed, "changed": list(changed.values())}
    return drawing.elements(), delta, picture


def _host_id(snap: Snapshot) -> str | None:
    host = snap.host_namespace()
    return host.id if host is not None else None


def _shape(pic: Picture) -> tuple:
    """What positions depend on besides the nodes themselves."""
    return (pic.bridges, pic.cell, pic.port_cell, pic.strays, pic.uplinks, pic.side, pic.inner)


def scope_of(before: Picture, after: Picture, touched: Iterable[dict]) -> Scope:
    """What must be placed again when the plan went from `before` to `after` and the nodes
    `touched` (added, removed or changed; old and new versions) came, went or changed."""
    boxes = {ns_id for _, ns_id in changed_keys(before.cell, after.cell)}
    boxes |= changed_keys(before.home, after.home) | changed_keys(before.inner, after.inner)
    boxes |= {after.port_cell[port][1] for port in changed_keys(before.port_cell, after.port_cell)
              if port in after.port_cell}
    boxes |= after.home.keys() - before.load.keys()  # never counted: count it now
    side = before.side != after.side
    side_ids = set(after.side)
    for node in touched:
        data = node["data"]
        for ref in (data["id"], data.get("parent")):
            if ref in after.home:
                boxes.add(ref)
            elif ref in side_ids:
                side = True
        if data["id"] in after.port_cell:
            boxes.add(after.port_cell[data["id"]][1])
    return Scope(before, frozenset(boxes & after.home.keys()), side, after.drawing.held, after.drawing.forwards())


def _placed(snap: Snapshot, pic: Picture, changed: dict[str, dict], added: set[str], scope: Scope) -> None:
    """Place what the scope reaches again; a node that moved is copied with its new place
    (in the drawing too) and joins `changed`."""
    nodes = pic.drawing.nodes
    positions = place(snap, pic, [], scope)
    for element_id in positions.keys() | added:
        element = nodes.get(element_id)
        if element is None:
            continue  # placed but not drawn: loopback, unless shown
        x, y = positions.get(element_id, (0.0, 0.0))
        x, y = round(x, 1), round(y, 1)
        was = element.get("position")
        if was is None or was["x"] != x or was["y"] != y:
            if element_id not in added and element_id not in changed:
                element = {**element}
                changed[element_id] = element
                nodes[element_id] = element
            element["position"] = {"x": x, "y": y}


def _fresh_elements(snap: Snapshot, pic: Picture, nodes: set[str], ifaces: set[str], whole: set[str],
                    show_loopback: bool, by_id: Mapping[str, Interface]) -> dict[str, dict]:
    """The touched elements, drawn from the new plan (positions are filled in by the caller)."""
    wanted = [i for i in snap.interfaces if i.netns in whole] if whole else []
    wanted += [by_id[i] for i in ifaces if i in by_id and by_id[i].netns not in whole]
    visible = [i for i in wanted if show_loopback or i.kind != "loopback"]
    needed = nodes | {i.netns for i in visible}
    namespaces = {ns.id: ns for ns in snap.namespaces if ns.id in needed}
    owners = {n: namespace_owner(namespaces[n]) for n in {i.netns for i in visible} if n in namespaces}
    out = [_namespace_node(namespaces[n], pic) for n in sorted(nodes) if n in namespaces]
    out += [_interface_node(i, by_id, snap.host, owners.get(i.netns, "unknown"), pic) for i in visible]
    drawn_ids = {i.id for i in visible}
    # an edge is emitted by its lower-id end, which may not be touched
    far_ends = [by_id[i.peer] for i in visible if i.peer in by_id and i.peer not in drawn_ids]
    shown = _Shown(by_id, show_loopback)
    edges = [e for e in _interface_edges(visible + far_ends, shown, by_id)
             if e["data"]["source"] in drawn_ids or e["data"]["target"] in drawn_ids]
    nat = _portforward_nodes(snap, by_id, pic)
    out += [n for n, _ in nat]
    edges += [e for _, e in nat if e] + _masquerade_edges(snap, pic)
    return {e["data"]["id"]: e for e in out + edges}


class _Shown:
    """`in` for "this interface is drawn" without building the set of every interface id."""

    def __init__(self, by_id: Mapping[str, Interface], show_loopback: bool):
        self._by_id, self._loopback = by_id, show_loopback

    def __contains__(self, if_id: object) -> bool:
        iface = self._by_id.get(if_id)  # type: ignore[arg-type]
        return iface is not None and (self._loopback or iface.kind != "loopback")


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
