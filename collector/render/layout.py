"""Where everything in the picture goes: the plan (which box each element belongs to, each
bridge's grid and each container's cell, kept from one snapshot to the next so that a change
redoes only what it reaches) and the positions placed from it (collector/render/graph.py
builds the elements from them)."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from bridgescope.collector.hostview import HostView, container_label
from bridgescope.collector.model import Interface, Namespace, Snapshot
from bridgescope.collector.render.drawing import Drawing
from bridgescope.collector.render.slots import Slots

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
    host = snap.host_namespace()
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
        touched |= changed_keys(old.inner, keep.inner)
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
        for ns_id in changed_keys(keep.cell_of, new.cell_of) & new.cell_of.keys():
            pic.cell[(new.id, ns_id)] = new.cell_of[ns_id]
        for port in changed_keys(keep.port_of, new.port_of) & new.port_of.keys():
            pic.parent[port] = new.id
            pic.port_cell[port] = (new.id, new.port_of[port])
        for port in new.strays:
            pic.parent[port] = new.id
        if new.strays:
            pic.strays[new.id] = list(new.strays)
        touched |= changed_keys(keep.inner, new.inner)
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


def changed_keys(before: Mapping, after: Mapping) -> set:
    if before == after:
        return set()
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
