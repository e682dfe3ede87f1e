"""Many hosts' pictures -> one picture: pure functions, no I/O, no threads.

Each agent sends the elements of its own host, with its own ids and its own server-side
positions. Here every id is prefixed `HOSTNAME/`, each host's picture goes into a box of its
own (a box node: the `parent` of what it holds; label = name and state), and the boxes stand in a grid. A host keeps
its cell for as long as it is known, so a host coming or going moves no other; only a host
whose picture outgrew its column or row pushes the ones after it. Beyond FOLD_AT hosts, every
host not asked open is one summary node ("host-b: 20 containers, 1 warning").
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bridgescope.collector.render.graph import diff_elements

# Fields of an element's data that hold another element's id (strings only: a namespace's
# "container" is a flag, a forward's is the id of the namespace it leads to).
ID_FIELDS = ("id", "parent", "source", "target", "netns", "master", "peer", "container")
COLUMNS = 3  # host boxes per row
GAP = 100.0  # between host boxes, model units
PAD = 60.0  # inside a host box, around its picture
FOLD_AT = 6  # more hosts than this: each folds into one summary node unless opened
FOLDED_SIZE = (260.0, 80.0)
EDGE = (80.0, 80.0)  # beyond the outermost nodes' centres: half their boxes and labels, both sides


@dataclass(frozen=True)
class FleetHost:
    """What the dashboard knows of one agent's host at one moment."""
    name: str
    state: str = "connecting"  # connecting, live, reconnecting or stale
    elements: tuple[dict, ...] = ()  # the agent's own, as its last graph and deltas left them
    stale_since: float | None = None  # epoch seconds; set while state is reconnecting/stale
    counts: Mapping[str, int] = field(default_factory=dict)  # doctor findings by severity
    error: str | None = None  # why it is not live, in one line


def host_box_id(name: str) -> str:
    return f"fleet:{name}"


def prefixed(name: str, element_id: str) -> str:
    return f"{name}/{element_id}"


def valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and len(name) <= 253 and name.isprintable()


# ---- one host ------------------------------------------------------------------------------

def prefix_element(name: str, element: dict, offset: tuple[float, float]) -> dict:
    """The agent's element under the merged picture's ids, moved by offset; top-level nodes
    go into the host's box."""
    data = dict(element["data"])
    for key in ID_FIELDS:
        if isinstance(data.get(key), str):
            data[key] = prefixed(name, data[key])
    if element.get("group") == "nodes" and not data.get("parent"):
        data["parent"] = host_box_id(name)
    data["host"] = name
    out = {**element, "data": data}
    if "position" in element:
        out["position"] = {"x": round(element["position"]["x"] + offset[0], 1),
                           "y": round(element["position"]["y"] + offset[1], 1)}
    return out


def related_only(elements: Iterable[dict]) -> list[dict]:
    """A host's elements without the namespaces that have nothing to do with it (the agent marks
    them related: false; on a busy node they outnumber the picture many times over)."""
    elements = list(elements)
    away = {e["data"]["id"] for e in elements
            if e["data"].get("kind") == "namespace" and e["data"].get("related") is False}
    if not away:
        return elements
    nodes = [e for e in elements if e.get("group") == "nodes" and e["data"]["id"] not in away
             and e["data"].get("netns") not in away and e["data"].get("parent") not in away]
    ids = {e["data"]["id"] for e in nodes}
    return nodes + [e for e in elements if e.get("group") == "edges"
                    and e["data"].get("source") in ids and e["data"].get("target") in ids]


def bounding_box(elements: Iterable[dict]) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) of the positioned nodes, or None when nothing is placed."""
    xs, ys = [], []
    for e in elements:
        p = e.get("position")
        if p is not None:
            xs.append(p["x"])
            ys.append(p["y"])
    return (min(xs), min(ys), max(xs), max(ys)) if xs else None


def size_of(view: FleetHost, folded: bool) -> tuple[float, float]:
    """Room a host's box takes in the grid."""
    box = None if folded else bounding_box(related_only(view.elements))
    if box is None:
        return FOLDED_SIZE
    # positions are centres: leave room for the outermost boxes' own width and labels
    return box[2] - box[0] + 2 * PAD + EDGE[0], box[3] - box[1] + 2 * PAD + EDGE[1]


def containers_of(elements: Iterable[dict]) -> int:
    return sum(1 for e in elements if e["data"].get("kind") == "namespace" and e["data"].get("container") is True)


def state_text(view: FleetHost) -> str:
    """`live`, `reconnecting since 12:03:05`, `stale since 12:03:07` (the host list shows the
    age, ticking; the picture would need a delta a second for it)."""
    if view.state in ("reconnecting", "stale") and view.stale_since is not None:
        since = time.strftime("%H:%M:%S", time.localtime(view.stale_since))
        return f"stale since {since}" if view.state == "stale" else f"reconnecting since {since}"
    return view.state


def findings_text(counts: Mapping[str, int]) -> str:
    parts = [f"{n} {sev}{'s' if n != 1 else ''}" for sev in ("error", "warning") if (n := counts.get(sev, 0))]
    return ", ".join(parts) or "no problems"


def host_box(view: FleetHost, origin: tuple[float, float], folded: bool) -> dict:
    """The box holding a host's picture, or (folded) the one node standing for it."""
    status = state_text(view)
    data = {"id": host_box_id(view.name), "kind": "fleethost", "host": view.name, "state": view.state,
            "status": status, "folded": folded, "containers": containers_of(view.elements),
            "counts": dict(view.counts)}
    if folded:
        data["label"] = (f"{view.name}: {data['containers']} containers, {findings_text(view.counts)}"
                         f"\n{status} (click to open)")
    else:
        data["label"] = f"{view.name} · {status}"
    classes = " ".join(["fleet-host", f"fleet-{view.state}"] + (["fleet-folded"] if folded else []))
    node = {"group": "nodes", "data": data, "classes": classes}
    if folded or not view.elements:
        w, h = FOLDED_SIZE
        node["position"] = {"x": round(origin[0] + w / 2, 1), "y": round(origin[1] + h / 2, 1)}
    return node


def host_elements(view: FleetHost, origin: tuple[float, float], folded: bool) -> list[dict]:
    """Everything of one host in the merged picture: its box first, then its elements."""
    box = host_box(view, origin, folded)
    if folded:
        return [box]
    shown = related_only(view.elements)
    bb = bounding_box(shown) or (0.0, 0.0, 0.0, 0.0)
    # the picture's top-left corner (plus the box's padding and the outer boxes' half size)
    offset = (origin[0] - bb[0] + PAD + EDGE[0] / 2, origin[1] - bb[1] + PAD + EDGE[1] / 2)
    return [box] + [prefix_element(view.name, e, offset) for e in shown]


# ---- the grid ------------------------------------------------------------------------------

def assign_slots(names: Iterable[str], previous: Mapping[str, int]) -> dict[str, int]:
    """A grid cell per host: a known host keeps its cell, new ones take the free cells in name
    order, hosts that went free theirs."""
    names = sorted(set(names))
    slots = {n: previous[n] for n in names if n in previous}
    taken = set(slots.values())
    free = (i for i in range(len(names) + len(taken) + 1) if i not in taken)
    for n in names:
        if n not in slots:
            slots[n] = next(free)
    return slots


def grid_origins(sizes: Mapping[str, tuple[float, float]], slots: Mapping[str, int],
                 columns: int = COLUMNS) -> dict[str, tuple[float, float]]:
    """Top-left corner of each host's cell: a column is as wide as its widest host, a row as
    tall as its tallest."""
    widths: dict[int, float] = {}
    heights: dict[int, float] = {}
    for name, slot in slots.items():
        w, h = sizes[name]
        col, row = slot % columns, slot // columns
        widths[col] = max(widths.get(col, 0.0), w)
        heights[row] = max(heights.get(row, 0.0), h)
    xs, ys = _starts(widths, columns), _starts(heights, 1 + max(heights, default=0))
    return {name: (xs[slot % columns], ys[slot // columns]) for name, slot in slots.items()}


def _starts(extent: Mapping[int, float], count: int) -> dict[int, float]:
    out, at = {}, 0.0
    for i in range(count):
        out[i] = at
        at += extent.get(i, 0.0) + (GAP if i in extent else 0.0)
    return out


def folded_hosts(names: Iterable[str], opened: Iterable[str], fold_at: int = FOLD_AT) -> frozenset[str]:
    names = set(names)
    return frozenset() if len(names) <= fold_at else frozenset(names - set(opened))


@dataclass(frozen=True)
class Layout:
    slots: Mapping[str, int]
    origins: Mapping[str, tuple[float, float]]
    folded: frozenset[str]


def layout(views: Mapping[str, FleetHost], previous: Layout | None, opened: Iterable[str] = (),
           fold_at: int = FOLD_AT, size: Callable[[FleetHost, bool], tuple[float, float]] = size_of) -> Layout:
    """`size`: size_of, or a memo of it (a change on one host need not measure all the others)."""
    # a host keeps its cell once it has had a picture; until then (its agent not yet heard,
    # its name not yet known) hosts take the free cells in name order
    placed = {n: c for n, c in (previous.slots if previous else {}).items()
              if n in views and (views[n].elements or views[n].state != "connecting")}
    slots = assign_slots(views, placed)
    folded = folded_hosts(views, opened, fold_at)
    sizes = {n: size(v, n in folded) for n, v in views.items()}
    return Layout(slots, grid_origins(sizes, slots), folded)


def merge(views: Mapping[str, FleetHost], lay: Layout) -> dict[str, list[dict]]:
    """Each host's share of the merged picture, by host name."""
    return {n: host_elements(v, lay.origins[n], n in lay.folded) for n, v in sorted(views.items())}


def flatten(parts: Mapping[str, list[dict]]) -> list[dict]:
    return [e for name in sorted(parts) for e in parts[name]]


def merged_delta(old: Mapping[str, list[dict]], new: Mapping[str, list[dict]]) -> dict:
    """What turns one merged picture into the next; hosts whose share is the same object are
    skipped without a look, so a change on one host costs that host's elements only."""
    added, changed, removed = [], [], []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, []), new.get(name, [])
        if before is after:
            continue
        d = diff_elements(before, after)
        added += d["added"]
        changed += d["changed"]
        removed += d["removed"]
    return {"added": added, "changed": changed, "removed": removed}


# ---- one agent's events on a host's elements ------------------------------------------------

def apply_delta(elements: tuple[dict, ...], delta: Mapping) -> tuple[dict, ...]:
    """The agent's delta (added / changed / removed ids) applied to its host's elements."""
    gone = set(delta.get("removed") or ())
    changed = {e["data"]["id"]: e for e in delta.get("changed") or ()}
    kept = [changed.pop(e["data"]["id"], e) for e in elements if e["data"]["id"] not in gone]
    known = {e["data"]["id"] for e in kept}
    fresh = [e for e in list(delta.get("added") or ()) + list(changed.values()) if e["data"]["id"] not in known]
    return tuple(kept + fresh)


# ---- the doctor ------------------------------------------------------------------------------

def merge_doctor(per_host: Mapping[str, Mapping]) -> dict:
    """The agents' "doctor" events as one: counts summed, each finding naming its host, the
    objects and the verdicts under the merged ids."""
    counts: dict[str, int] = {}
    findings, verdicts, hosts = [], {}, {}
    checked = [e.get("checked_at") for e in per_host.values() if e.get("checked_at")]
    for name in sorted(per_host):
        event = per_host[name]
        host_counts = dict(event.get("counts") or {})
        hosts[name] = host_counts
        for sev, n in host_counts.items():
            counts[sev] = counts.get(sev, 0) + int(n)
        for f in event.get("findings") or ():
            findings.append({**f, "host": name, "objects": [prefixed(name, o) for o in f.get("objects") or ()]})
        for fid, v in (event.get("verdicts") or {}).items():
            verdicts[prefixed(name, fid)] = v
    return {"type": "doctor", "counts": counts, "findings": findings, "verdicts": verdicts,
            "hosts": hosts, "checked_at": min(checked) if checked else None}
