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
import math
import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from bridgescope.collector.hostview import HostView, container_label
from bridgescope.collector.model import (
    Interface,
    Masquerade,
    Namespace,
    PortForward,
    Snapshot,
    masquerade_id,
    portforward_id,
)
from bridgescope.collector.render.slots import Slots, remember, remembered_slots

CELL_W, CELL_H = 220.0, 120.0  # one container's cell in a bridge's grid
# Inside a cell, what a box's contents keep clear of: left, its own bridge port, the box's
# padding and half the widest IPv4 label (255.255.255.255, 112 px at the label size); right,
# the next cell's port, with room for a 13-character address (172.17.11.241, 95 px). The
# cells stay as narrow as this allows: three containers with forwards still fit 1366 px wide
# at a legible zoom.
PORT_CLEAR, NEXT_CLEAR = 96.0, 66.0
ITEM_W, ITEM_H = 86.0, 56.0  # one interface or forward (with its label) in a container's box
BOX_ROW = 3  # items side by side in a box before the next row
UPLINK_W = 240.0  # one uplink (and its label) in the top row
BRIDGE_Y = 140.0  # bridges' label row, under the uplinks
GRID_Y = 60.0  # a bridge's first grid row, below its label
STRAY_W = 60.0  # bridge ports with no container, in a row over the grid
BRIDGE_GAP = 70.0
SIDE_GAP = 220.0  # between the column of other namespaces (left of the host box) and the host
SIDE_ROW = 70.0  # one interface in that column
MIN_COLS = 2


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


# ---- the plan: who sits where, by identity ----------------------------------------------------

class Picture:
    """Where everything belongs, decided once per snapshot: parents, cells, rows, columns."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.slots = Slots()
        self.bridges: list[tuple[str, int]] = []  # (bridge id, columns), left to right
        self.home: dict[str, str] = {}  # container namespace id -> id of the bridge it sits under
        self.parent: dict[str, str] = {}  # host-side port id -> its bridge's id
        self.cell: dict[tuple[str, str], int] = {}  # (bridge id, namespace id) -> cell index
        self.port_cell: dict[str, tuple[str, str]] = {}  # port id -> (bridge id, namespace id)
        self.inner: dict[str, list[str]] = {}  # container namespace id -> its interfaces toward bridges
        self.strays: dict[str, list[str]] = {}  # bridge id -> ports with no container behind them
        self.uplinks: list[str] = []  # host interfaces in the top row, the way out first
        self.way_out: str | None = None
        self.side: list[str] = []  # other namespaces, in the column beside the host
        self.names: dict[str, str] = {}  # container namespace id -> its name
        self.related: set[str] = set()  # namespaces wired to the host (veth by veth); the rest is unrelated
        # kept by `place`, so that a relayout can size the cells without counting every box again
        self.load: dict[str, int] = {}  # container namespace id -> items in its box, loopback left out
        self.grid: dict[str, Grid] = {}  # bridge id -> its grid
        self.fullest: dict[str, int] = {}  # bridge id -> the most items one of its boxes holds
        # kept by `plan`, so that the next plan redoes only what a change reaches
        self.plans: dict[str, BridgePlan] = {}  # bridge id -> its share, left to right
        self.reach: dict[str, frozenset[str]] = {}  # namespace, port or inner interface id -> bridges it sits on
        self.crossing: frozenset[str] = frozenset()  # interfaces whose veth peer is in another namespace
        self.drawing = Drawing()  # the elements drawn from this plan, by id, with their indexes (once patched)


def plan(snap: Snapshot, slots: Slots, before: Picture | None = None, *,
         ifaces: Collection[str] = (), namespaces: Collection[str] = (),
         by_id: Mapping[str, Interface] | None = None) -> Picture:
    """Who sits where. With `before` (the plan of the previous snapshot, from the same slots)
    and what changed since (interface ids, namespace ids; the interfaces of a namespace that
    came or went included), the bridges the change cannot reach keep their share of `before`
    and the column beside the host is kept when no veth between namespaces changed: the work
    follows the change, and the result is the plan made from scratch."""
    pic = Picture()
    host = snap.namespace(snap.host) if snap.host else snap.host_namespace()
    if host is None:
        pic.side = [ns.id for ns in snap.namespaces]
        pic.related = set(pic.side)
        pic.slots = slots
        return pic
    pic.host = host.id
    if before is not None and (before.host != host.id or before.slots != slots):
        before = None
    by_id = {i.id: i for i in snap.interfaces} if by_id is None else by_id
    mine = snap.interfaces_in(host.id)
    bridges = [i for i in mine if i.kind == "bridge"]
    bridge_ids = {b.id for b in bridges}
    dirty = bridge_ids if before is None else _reached(before, by_id, ifaces, namespaces) & bridge_ids
    remembered = dict(slots.bridges)
    old_cells = _cells_by_bridge(slots.cells) if dirty else {}
    ports: dict[str, list[Interface]] = {}
    if dirty:
        for iface in mine:
            if iface.master in dirty:
                ports.setdefault(iface.master, []).append(iface)
    ns_by_id = {n.id: n for n in snap.namespaces} if dirty else {}
    plans = {}
    for bridge in bridges:
        if bridge.id in dirty or bridge.id not in before.plans:
            plans[bridge.id] = _plan_bridge(bridge, ports.get(bridge.id, ()), by_id, ns_by_id, host.id,
                                            remembered.get(bridge.name), old_cells.get(bridge.name, ()))
        else:
            plans[bridge.id] = before.plans[bridge.id]
    order = sorted(plans.values(), key=lambda p: (p.name not in remembered,
                                                  list(remembered).index(p.name) if p.name in remembered else 0))
    pic.plans = {p.id: p for p in order}
    pic.bridges = [(p.id, p.cols) for p in order]
    _seat_all(pic, before, order)
    uplink = HostView(snap, host, ()).uplink()
    top = [i for i in mine if i.kind != "bridge" and i.master not in bridge_ids]
    top.sort(key=lambda i: (i.kind == "loopback", i.name != uplink, i.ifindex))
    pic.uplinks = [i.id for i in top]
    pic.way_out = next((i.id for i in top if i.kind != "loopback"), None)
    if before is not None and _side_kept(before, pic, by_id, ifaces, namespaces):
        pic.side, pic.related, pic.crossing = before.side, before.related, before.crossing
    else:
        pic.side, pic.related, pic.crossing = _side_order(snap, host.id, pic.home.keys(), by_id)
    pic.slots = Slots(tuple((p.name, p.cols) for p in order), tuple(c for p in order for c in p.cells))
    return pic


@dataclass(frozen=True)
class BridgePlan:
    """One bridge's share of the plan, kept so that a change elsewhere reuses it."""
    id: str
    name: str
    cols: int
    cells: tuple[tuple[str, str, int], ...]  # the slots it remembers: (bridge name, container key, cell index)
    cell_of: dict[str, int]  # container namespace id -> its cell
    port_of: dict[str, str]  # port id -> the container namespace behind it
    inner: dict[str, tuple[tuple[str, str], ...]]  # namespace id -> (inner interface id, label) per port
    strays: tuple[str, ...]
    ports_of: dict[str, tuple[str, ...]]  # container namespace id -> its ports

    def reach(self) -> set[str]:
        """The ids whose change reaches this share: the bridge, its ports, what is behind them."""
        return {self.id, *self.strays, *self.port_of, *self.inner,
                *(inner for pairs in self.inner.values() for inner, _ in pairs)}


def _plan_bridge(bridge: Interface, ports: Iterable[Interface], by_id: Mapping[str, Interface],
                 namespaces: Mapping[str, Namespace], host: str, cols: int | None,
                 remembered: tuple[tuple[str, int], ...]) -> BridgePlan:
    atts, strays = [], []
    inner: dict[str, list[tuple[str, str]]] = {}
    for port in ports:
        peer = by_id.get(port.peer) if port.peer else None
        ns = namespaces.get(peer.netns) if peer is not None and peer.netns != host else None
        if ns is None:
            strays.append(port.id)
            continue
        atts.append((ns, port))
        inner.setdefault(ns.id, []).append((peer.id, container_label(ns, (port,))))
    cols = cols or max(MIN_COLS, math.ceil(math.sqrt(1.5 * len(atts))))
    seats = _seats(tuple(ns.name for ns, _ in atts), remembered)
    cell_of = {atts[k][0].id: index for k, index in seats}  # two ports of one container: the last seated
    port_of = {port.id: ns.id for ns, port in atts}
    ports_of: dict[str, list[str]] = {}
    for ns, port in atts:
        ports_of.setdefault(ns.id, []).append(port.id)
    cells = tuple((bridge.name, atts[k][0].name, index) for k, index in seats)
    return BridgePlan(bridge.id, bridge.name, cols, cells, cell_of, port_of,
                      {ns_id: tuple(pairs) for ns_id, pairs in inner.items()}, tuple(strays),
                      {ns_id: tuple(ports) for ns_id, ports in ports_of.items()})


@lru_cache(maxsize=256)
def _seats(keys: tuple[str, ...], remembered: tuple[tuple[str, int], ...]) -> tuple[tuple[int, int], ...]:
    """(position in keys, cell index) for one bridge's containers, in the order seated: a
    remembered cell is kept, the others take the first free cells in natural order. Cached:
    a bridge whose containers and cells are as they were is seated as it was."""
    old = dict(remembered)
    taken: set[int] = set()
    out, waiting = [], []
    for k in sorted(range(len(keys)), key=lambda k: _natural(keys[k])):
        index = old.get(keys[k])
        if index is None or index in taken:
            waiting.append(k)
            continue
        taken.add(index)
        out.append((k, index))
    free = (i for i in range(len(keys) + len(taken) + 1) if i not in taken)
    out += zip(waiting, free)
    return tuple(out)


@lru_cache(maxsize=8)
def _cells_by_bridge(cells: tuple[tuple[str, str, int], ...]) -> dict[str, tuple[tuple[str, int], ...]]:
    grouped: dict[str, list[tuple[str, int]]] = {}
    for bridge, key, index in cells:
        grouped.setdefault(bridge, []).append((key, index))
    return {bridge: tuple(pairs) for bridge, pairs in grouped.items()}


def _reached(before: Picture, by_id: Mapping[str, Interface], ifaces: Iterable[str],
             namespaces: Iterable[str]) -> set[str]:
    """The bridges whose share of the plan a change of these interfaces and namespaces may
    alter: where they sat before, and where they (or their veth peers) are ports now."""
    out: set[str] = set()
    for ref in (*ifaces, *namespaces):
        out |= before.reach.get(ref, set())
        iface = by_id.get(ref)
        if iface is not None:
            out.add(iface.id)
            out.add(iface.master)
            peer = by_id.get(iface.peer) if iface.peer else None
            if peer is not None:
                out.add(peer.master)
    return out


def _seat_all(pic: Picture, before: Picture | None, order: list[BridgePlan]) -> None:
    """The flat maps from the bridges' shares: from scratch, or `before`'s with the entries of
    the shares that changed taken out and put in again."""
    old_plans: dict[str, BridgePlan] = {}
    if before is not None and [b for b, _ in before.bridges if b in pic.plans] == \
            [p.id for p in order if p.id in before.plans]:
        old_plans = before.plans
        for name in ("parent", "cell", "port_cell", "strays", "home", "inner", "names", "reach"):
            setattr(pic, name, dict(getattr(before, name)))
    pairs = [(old_plans.get(b), pic.plans.get(b)) for b in old_plans.keys() | pic.plans.keys()]
    pairs = [(old, new) for old, new in pairs if old is not new]
    touched: set[str] = set()
    for old, new in pairs:  # every entry that goes first: a port may pass from one bridge to another
        if old is None:
            continue
        keep = new if new is not None else BridgePlan(old.id, old.name, 0, (), {}, {}, {}, (), {})
        for ns_id in old.cell_of.keys() - keep.cell_of.keys():
            del pic.cell[(old.id, ns_id)]
        for port in old.port_of.keys() - keep.port_of.keys():
            del pic.parent[port], pic.port_cell[port]
        for port in set(old.strays) - set(keep.strays):
            del pic.parent[port]
        pic.strays.pop(old.id, None)
        touched |= _changed_keys(old.inner, keep.inner)
        for ref in old.reach() - keep.reach():
            rest = pic.reach[ref] - {old.id}
            if rest:
                pic.reach[ref] = rest
            else:
                del pic.reach[ref]
    reached: dict[str, set[str]] = {}
    for old, new in pairs:
        if new is None:
            continue
        keep = old if old is not None else BridgePlan(new.id, new.name, 0, (), {}, {}, {}, (), {})
        for ns_id in _changed_keys(keep.cell_of, new.cell_of) & new.cell_of.keys():
            pic.cell[(new.id, ns_id)] = new.cell_of[ns_id]
        for port in _changed_keys(keep.port_of, new.port_of) & new.port_of.keys():
            pic.parent[port] = new.id
            pic.port_cell[port] = (new.id, new.port_of[port])
        for port in new.strays:
            pic.parent[port] = new.id
        if new.strays:
            pic.strays[new.id] = list(new.strays)
        touched |= _changed_keys(keep.inner, new.inner)
        for ref in new.reach() - keep.reach():
            reached.setdefault(ref, set()).add(new.id)
    for ref, ids in reached.items():
        pic.reach[ref] = pic.reach.get(ref, frozenset()) | ids
    for ns_id in touched:  # home: the first bridge, left to right; the interfaces toward bridges in that order
        pic.home.pop(ns_id, None)
        pic.inner.pop(ns_id, None)
        pic.names.pop(ns_id, None)
        for p in order:
            for inner, label in p.inner.get(ns_id, ()):
                pic.home.setdefault(ns_id, p.id)
                pic.inner.setdefault(ns_id, []).append(inner)
                pic.names.setdefault(ns_id, label)


@lru_cache(maxsize=1 << 16)
def _natural(text: str) -> tuple:
    """c2 before c10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _side_order(snap: Snapshot, host: str, containers: Container[str], by_id: Mapping[str, Interface]
                ) -> tuple[list[str], set[str], frozenset[str]]:
    """Namespaces that are neither the host nor its containers: the ones wired to the host
    (a lab's internet, its client) first, nearest first, then the rest by name. Also which
    namespaces are wired to the host, and the interfaces whose veth crosses to another namespace."""
    links: dict[str, set[str]] = {}
    crossing = []
    for iface in snap.interfaces:
        peer = by_id.get(iface.peer) if iface.peer else None
        if peer is not None and peer.netns != iface.netns:
            crossing.append(iface.id)
            links.setdefault(iface.netns, set()).add(peer.netns)
            links.setdefault(peer.netns, set()).add(iface.netns)
    distance, todo = {host: 0}, [host]
    for ns_id in todo:
        for other in sorted(links.get(ns_id, ())):
            if other not in distance:
                distance[other] = distance[ns_id] + 1
                todo.append(other)
    others = [ns for ns in snap.namespaces if ns.id != host and ns.id not in containers]
    far = len(distance) + 1
    order = [ns.id for ns in sorted(others, key=lambda ns: (distance.get(ns.id, far), _natural(ns.name), ns.id))]
    return order, set(distance), frozenset(crossing)


def _side_kept(before: Picture, pic: Picture, by_id: Mapping[str, Interface], ifaces: Iterable[str],
               namespaces: Iterable[str]) -> bool:
    """Whether the column beside the host is `before`'s: the same containers, no other
    namespace touched (come, gone, renamed), and no veth between namespaces changed."""
    if pic.home.keys() != before.home.keys():
        return False
    if any(ns_id != pic.host and ns_id not in pic.home for ns_id in namespaces):
        return False
    for if_id in ifaces:
        iface = by_id.get(if_id)
        peer = by_id.get(iface.peer) if iface is not None and iface.peer else None
        if if_id in before.crossing or peer is not None and peer.netns != iface.netns:
            return False
    return True


# ---- positions ---------------------------------------------------------------------------------

Grid = tuple[float, int, float, float]  # a bridge's grid: left edge, columns, cell width, cell height


@dataclass(frozen=True)
class Scope:
    """What a relayout places again when the plan went from `before` to the one at hand: these
    boxes (the box, its ports, what it holds) and perhaps the column of other namespaces; a box
    whose bridge's grid moved or resized joins them. The rest keeps the places `before` gave it,
    and the other boxes' loads (what sizes the cells) are `before`'s."""
    before: Picture
    boxes: frozenset[str]
    side: bool
    items: Callable[[str], list[dict]]  # the nodes a container's box (or a namespace beside the host) holds
    forwards: list[dict]  # every forward's node


def place(snap: Snapshot, pic: Picture, nodes: list[dict], scope: Scope | None = None
          ) -> dict[str, tuple[float, float]]:
    """Positions of the nodes; with a scope, of what it reaches (`nodes` unused: the scope
    says what each box holds). Keeps each box's load and each bridge's grid in `pic`."""
    pos: dict[str, tuple[float, float]] = {}
    for k, iface_id in enumerate(pic.uplinks):
        pos[iface_id] = (k * UPLINK_W, 0.0)
    if scope is None:
        inside: dict[str, list[dict]] = {}
        for node in nodes:
            data = node["data"]
            if data["kind"] != "namespace":
                inside.setdefault(data["parent"], []).append(node)
        items: Callable[[str], list[dict]] = lambda ns_id: inside.get(ns_id, [])
        forwards = [n for n in nodes if n["data"]["kind"] == "portforward"]
        load, boxes = {}, pic.home.keys()
    else:
        items, forwards = scope.items, scope.forwards
        load = dict(scope.before.load)
        gone = scope.before.load.keys() - pic.home.keys()
        for ns_id in gone:
            del load[ns_id]
        boxes = set(scope.boxes & pic.home.keys())
    for ns_id in boxes:
        # loopback is left out: shown or not, the cells (and so every other place) stay the same
        load[ns_id] = sum(n["data"]["kind"] != "loopback" for n in items(ns_id))
    pic.load = load
    if scope is None:
        pic.fullest = _fullest(pic, pic.plans)
    else:
        before = scope.before
        reached = {b for ns_id in boxes | gone for b in (before.home.get(ns_id), pic.home.get(ns_id))}
        pic.fullest = {b: n for b, n in before.fullest.items() if b in pic.plans}
        pic.fullest.update(_fullest(pic, reached | (pic.plans.keys() - before.fullest.keys())))
    pic.grid = _grids(pic)
    moved = set() if scope is None else {b for b, g in pic.grid.items() if scope.before.grid.get(b) != g}
    for bridge_id in moved:
        boxes |= {ns_id for ns_id in pic.plans[bridge_id].cell_of if pic.home.get(ns_id) == bridge_id}
    for bridge_id, (left, cols, width, _) in pic.grid.items():
        pos[bridge_id] = (left + cols * width / 2, BRIDGE_Y)
        for k, port in enumerate(pic.strays.get(bridge_id, ())):
            pos[port] = (left + 15 + k * STRAY_W, BRIDGE_Y + 30)
    for port in pic.port_cell if scope is None else _ports(pic, boxes, moved):
        ox, oy = _cell_at(pic, pic.port_cell[port])
        pos[port] = (ox + 10, oy + 40)  # left of the box: the veth pair is a short edge
    for ns_id in boxes:
        ox, oy = _cell_at(pic, (pic.home[ns_id], ns_id))
        first = pic.inner.get(ns_id, [])
        held = items(ns_id)
        if len(held) > 1:  # most boxes hold one thing: nothing to order
            held = sorted(held, key=lambda n: _in_box_key(n, first))
        # a box grows to both sides of what it holds (labels included): its first item keeps
        # clear of the box's own port, and a new item goes right (or below) without moving it
        pos[ns_id] = (ox + PORT_CLEAR, oy + 50)  # a box's own place is where its first item is
        for k, node in enumerate(held):
            row, col = divmod(k, BOX_ROW)
            pos[node["data"]["id"]] = (ox + PORT_CLEAR + ITEM_W * col, oy + 40 + ITEM_H * row)
    left = max((g[0] + g[1] * g[2] + BRIDGE_GAP for g in pic.grid.values()), default=0.0)
    right = max(len(pic.uplinks) * UPLINK_W, left, CELL_W)
    loose = [n["data"]["id"] for n in forwards if n["data"]["parent"] == pic.host]
    for k, node_id in enumerate(loose):
        pos[node_id] = ((len(pic.uplinks) + k) * UPLINK_W, 0.0)
    right = max(right, (len(pic.uplinks) + len(loose)) * UPLINK_W)
    if scope is None or scope.side:
        _place_side(pic, items, pos)
    if pic.host:
        pos[pic.host] = (right / 2, BRIDGE_Y)
    return pos


def _fullest(pic: Picture, bridges: Iterable[str | None]) -> dict[str, int]:
    """The most items a box under each of these bridges holds (a box is under its home bridge)."""
    out = {}
    for bridge_id in bridges:
        if bridge_id in pic.plans:
            home = [pic.load.get(ns_id, 0) for ns_id in pic.plans[bridge_id].cell_of
                    if pic.home.get(ns_id) == bridge_id]
            out[bridge_id] = max(home, default=0)
    return out


def _grids(pic: Picture) -> dict[str, Grid]:
    """Each bridge's grid, left to right, its cells big enough for its fullest box."""
    left, grids = 0.0, {}
    for bridge_id, cols in pic.bridges:
        width, height = cell_size(pic.fullest.get(bridge_id, 1))
        grids[bridge_id] = (left, cols, width, height)
        left += cols * width + BRIDGE_GAP
    return grids


def _ports(pic: Picture, boxes: Iterable[str], bridges: Iterable[str]) -> set[str]:
    """The ports of these boxes (on any bridge) and every port of these bridges."""
    out = {port for bridge_id in bridges for port in pic.plans[bridge_id].port_of}
    for ns_id in boxes:
        for bridge_id in pic.reach.get(ns_id, ()):
            out.update(pic.plans[bridge_id].ports_of.get(ns_id, ()))
    return out


def _cell_at(pic: Picture, key: tuple[str, str]) -> tuple[float, float]:
    """The top-left corner of a container's cell under a bridge."""
    x0, cols, width, height = pic.grid[key[0]]
    index = pic.cell[key]
    return x0 + (index % cols) * width, BRIDGE_Y + GRID_Y + (index // cols) * height


def _place_side(pic: Picture, items: Callable[[str], list[dict]], pos: dict[str, tuple[float, float]]) -> None:
    # labels sit right of the interfaces, so a wire down the column's left stays clear of them
    x0, y = -SIDE_GAP, 0.0
    for ns_id in pic.side:
        pos[ns_id] = (x0, y)
        for node_id in sorted((n["data"]["id"] for n in items(ns_id)), key=_id_rank):
            pos[node_id] = (x0, y)
            y += SIDE_ROW
        y += SIDE_ROW


def cell_size(items: int) -> tuple[float, float]:
    """A bridge's grid cell, big enough for its fullest container box: up to BOX_ROW items side
    by side, then another row."""
    across = min(max(items, 1), BOX_ROW)
    rows = max(1, math.ceil(items / BOX_ROW))
    return max(CELL_W, PORT_CLEAR + NEXT_CLEAR + ITEM_W * (across - 1)), CELL_H + ITEM_H * (rows - 1)


def _in_box_key(node: dict, first: list[str]) -> tuple:
    """In a container's box: its interfaces toward bridges in bridge order, then the rest
    (loopback last), then its forwards."""
    data = node["data"]
    if data["kind"] == "portforward":
        return (2, data.get("host_port") or 0, data["id"])
    if data["id"] in first:
        return (0, first.index(data["id"]), "")
    return (3 if data["kind"] == "loopback" else 1, data.get("ifindex") or 0, data["id"])


def _id_rank(node_id: str) -> tuple:
    head, _, tail = node_id.rpartition("/if")
    return (head, int(tail) if tail.isdigit() else 0, node_id)



# ---- incremental rebuild ------------------------------------------------------------------

NAT_KINDS = ("portforward", "masquerade")


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
    whole |= _changed_keys(before.home, picture.home)
    nodes = ns_ids | whole | _changed_keys(before.names, picture.names) | (before.related ^ picture.related)
    ifaces = set(only) | _changed_keys(before.parent, picture.parent)
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
    host = snap.namespace(snap.host) if snap.host else snap.host_namespace()
    return host.id if host is not None else None


def _changed_keys(before: Mapping, after: Mapping) -> set:
    if before == after:
        return set()
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _shape(pic: Picture) -> tuple:
    """What positions depend on besides the nodes themselves."""
    return (pic.bridges, pic.cell, pic.port_cell, pic.strays, pic.uplinks, pic.side, pic.inner)


def scope_of(before: Picture, after: Picture, touched: Iterable[dict]) -> Scope:
    """What must be placed again when the plan went from `before` to `after` and the nodes
    `touched` (added, removed or changed; old and new versions) came, went or changed."""
    boxes = {ns_id for _, ns_id in _changed_keys(before.cell, after.cell)}
    boxes |= _changed_keys(before.home, after.home) | _changed_keys(before.inner, after.inner)
    boxes |= {after.port_cell[port][1] for port in _changed_keys(before.port_cell, after.port_cell)
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


class Drawing:
    """The elements by id (nodes, then edges, each in the order drawn), with what finds the
    ones a change touches without a pass over all of them: a namespace's interfaces and the
    edges with an end in it, an interface's edges, and the NAT elements (redrawn each time)."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.edges: dict[str, dict] = {}
        self.by_ns: dict[str, frozenset[str]] = {}
        self.by_end: dict[str, frozenset[str]] = {}
        self.nat: frozenset[str] = frozenset()

    @classmethod
    def of(cls, elements: list[dict]) -> Drawing:
        drawing = cls()
        drawing._add(elements)
        return drawing

    def size(self) -> int:
        return len(self.nodes) + len(self.edges)

    def get(self, element_id: str) -> dict | None:
        return self.nodes.get(element_id) or self.edges.get(element_id)

    def elements(self) -> list[dict]:
        return [*self.nodes.values(), *self.edges.values()]

    def touching(self, nodes: set[str], ifaces: set[str], whole: set[str]) -> set[str]:
        """Ids of what a redraw of these namespace nodes, interfaces and whole namespaces
        replaces: those nodes, every element of the namespaces, the interfaces' edges, NAT."""
        out = set(self.nat)
        out.update(i for i in nodes if i in self.nodes)
        out.update(i for i in ifaces if i in self.nodes)
        for ns_id in whole:
            out |= self.by_ns.get(ns_id, frozenset())
        for if_id in ifaces:
            out |= self.by_end.get(if_id, frozenset())
        return out

    def held(self, parent: str) -> list[dict]:
        """The nodes inside a namespace's box (or beside the host): its interfaces, its forwards."""
        out = [self.nodes[i] for i in self.by_ns.get(parent, ()) if i in self.nodes]
        return out + [n for n in self.forwards() if n["data"]["parent"] == parent]

    def forwards(self) -> list[dict]:
        return [self.nodes[i] for i in self.nat if i in self.nodes]

    def patched(self, added: list[dict], removed: list[dict], changed: dict[str, dict]) -> Drawing:
        """A new drawing (this one unchanged): removed ones out, changed ones in their place,
        added ones at the end of their group."""
        out = Drawing()
        out.nodes, out.edges = dict(self.nodes), dict(self.edges)
        out.by_ns, out.by_end, out.nat = dict(self.by_ns), dict(self.by_end), self.nat
        out._remove(removed)
        for element_id, element in changed.items():
            (out.nodes if element["group"] == "nodes" else out.edges)[element_id] = element
        out._add(added)
        return out

    def _add(self, elements: Iterable[dict]) -> None:
        by_ns, by_end, nat = self._sort(elements, add=True)
        for index, entries in ((self.by_ns, by_ns), (self.by_end, by_end)):
            for key, ids in entries.items():
                index[key] = index.get(key, frozenset()) | ids
        self.nat = self.nat | nat if nat else self.nat

    def _remove(self, elements: Iterable[dict]) -> None:
        by_ns, by_end, nat = self._sort(elements, add=False)
        for index, entries in ((self.by_ns, by_ns), (self.by_end, by_end)):
            for key, ids in entries.items():
                if rest := index.get(key, frozenset()) - ids:
                    index[key] = rest
                else:
                    index.pop(key, None)
        self.nat = self.nat - nat if nat else self.nat

    def _sort(self, elements: Iterable[dict], *, add: bool
              ) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
        """Put the elements in (or take them out of) their group; their index entries, one set
        per entry (a namespace holds a thousand elements: one union each, not a thousand)."""
        by_ns: dict[str, set[str]] = {}
        by_end: dict[str, set[str]] = {}
        nat: set[str] = set()
        for element in elements:
            data = element["data"]
            element_id, kind = data["id"], data["kind"]
            nodes = element["group"] == "nodes"
            group = self.nodes if nodes else self.edges
            if add:
                group[element_id] = element
            else:
                group.pop(element_id, None)
            if kind in NAT_KINDS:
                nat.add(element_id)
            elif nodes:
                if kind != "namespace":
                    by_ns.setdefault(data["netns"], set()).add(element_id)
            else:
                for end in (data["source"], data["target"]):
                    by_ns.setdefault(_interface_ns(end), set()).add(element_id)
                    by_end.setdefault(end, set()).add(element_id)
        return by_ns, by_end, nat


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
