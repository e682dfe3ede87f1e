"""The fleet's merged picture, pure: recorded agent events (a lab host's graph, then the delta
of a veth pair added in it) merged for several hosts."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bridgescope.webui.fleet import merge
from bridgescope.webui.fleet.merge import FleetHost

RECORDED = json.loads((Path(__file__).parent / "data" / "fleet_events.json").read_text())
GRAPH, DELTA = RECORDED["graph"], RECORDED["delta"]


def live(name: str, elements=None, **kw) -> FleetHost:
    return FleetHost(name, "live", tuple(GRAPH["elements"] if elements is None else elements), **kw)


def merged(views: dict[str, FleetHost], previous=None, opened=()) -> tuple[merge.Layout, list[dict]]:
    lay = merge.layout(views, previous, opened)
    return lay, merge.flatten(merge.merge(views, lay))


def by_id(elements: list[dict]) -> dict[str, dict]:
    return {e["data"]["id"]: e for e in elements}


def boxes(elements: list[dict]) -> dict[str, tuple[float, float, float, float]]:
    """Each host's extent in the merged picture."""
    out: dict[str, list] = {}
    for e in elements:
        if "position" in e:
            out.setdefault(e["data"]["host"], []).append(e["position"])
    return {h: (min(p["x"] for p in ps), min(p["y"] for p in ps), max(p["x"] for p in ps),
                max(p["y"] for p in ps)) for h, ps in out.items()}


def test_every_id_and_reference_is_prefixed_and_every_element_belongs_to_its_host():
    _, elements = merged({"host-a": live("host-a"), "host-b": live("host-b")})
    ids = by_id(elements)
    assert len(ids) == len(elements) == 2 * (len(GRAPH["elements"]) + 1)
    for e in elements:
        d = e["data"]
        if d["kind"] == "fleethost":
            continue
        assert d["id"].startswith(d["host"] + "/")
        for key in ("parent", "source", "target", "netns", "master", "peer"):
            if isinstance(d.get(key), str):
                assert d[key] in ids, (key, d[key])  # every reference resolves in the merged list
    # the agent's top-level boxes went into their host's box; labels are kept for search
    a_ns = [e for e in elements if e["data"]["host"] == "host-a" and e["data"]["kind"] == "namespace"
            and e["data"]["parent"] == "fleet:host-a"]
    assert {e["data"]["label"] for e in a_ns} >= {"bsflrec-host", "bsflrec-inet", "bsflrec-client"}
    assert sum("8080" in e["data"]["label"] for e in elements
               if e["group"] == "nodes" and e["data"]["kind"] == "portforward") == 2


def test_host_pictures_never_overlap_and_keep_their_inner_shape():
    _, elements = merged({n: live(n) for n in ("a", "b", "c", "d")})
    ext = boxes(elements)
    names = sorted(ext)
    for i, m in enumerate(names):
        for n in names[i + 1:]:
            x1, y1, x2, y2 = ext[m]
            u1, v1, u2, v2 = ext[n]
            assert x2 < u1 or u2 < x1 or y2 < v1 or v2 < y1, (m, n)
    # a host's picture is the agent's, moved as one piece
    ids = by_id(elements)
    original = {e["data"]["id"]: e["position"] for e in GRAPH["elements"] if "position" in e}
    moves = {(round(ids[f"b/{i}"]["position"]["x"] - p["x"], 1), round(ids[f"b/{i}"]["position"]["y"] - p["y"], 1))
             for i, p in original.items()}
    assert len(moves) == 1


def test_a_host_coming_or_going_moves_no_other():
    views = {n: live(n) for n in ("alpha", "charlie")}
    lay1, first = merged(views)
    lay2, second = merged({**views, "bravo": live("bravo")}, lay1)
    lay3, third = merged(views, lay2)
    for name in ("alpha", "charlie"):
        assert boxes(first)[name] == boxes(second)[name] == boxes(third)[name]
    assert lay2.slots["bravo"] == 2  # the free cell, not alpha's or charlie's
    # order by name when they come together
    assert merge.layout({n: live(n) for n in ("z", "b", "m")}, None).slots == {"b": 0, "m": 1, "z": 2}


def test_a_host_that_grows_pushes_only_what_must_move():
    views = {n: live(n, []) for n in ("a", "b", "c", "d")}  # a b c / d
    lay1, _ = merged(views)
    lay2, _ = merged({**views, "c": live("c")}, lay1)  # c's picture arrives: the last column, row 0 grow
    assert lay2.origins["a"] == lay1.origins["a"] and lay2.origins["b"] == lay1.origins["b"]
    assert lay2.origins["c"] == lay1.origins["c"]
    assert lay2.origins["d"][1] > lay1.origins["d"][1]  # below the taller row: it must move down
    assert lay2.origins["d"][0] == lay1.origins["d"][0]


def test_beyond_six_hosts_each_folds_into_one_summary_node_that_opens_on_demand():
    doctor = {"warning": 1, "error": 0}
    views = {f"h{i}": live(f"h{i}", counts=doctor) for i in range(7)}
    lay, elements = merged(views)
    assert lay.folded == frozenset(views)
    assert len(elements) == 7 and all(e["data"]["kind"] == "fleethost" for e in elements)
    assert elements[0]["data"]["label"].startswith("h0: 2 containers, 1 warning")
    lay, elements = merged(views, lay, opened={"h3"})
    assert lay.folded == frozenset(views) - {"h3"}
    assert sum(e["data"]["host"] == "h3" for e in elements) == len(GRAPH["elements"]) + 1
    _, few = merged({n: views[n] for n in list(views)[:6]})
    assert all("position" in e for e in few if e["group"] == "nodes" and e["data"]["kind"] != "fleethost")
    assert not any(e["data"]["folded"] for e in few if e["data"]["kind"] == "fleethost")


def test_a_delta_from_one_agent_touches_only_that_hosts_elements():
    views = {n: live(n) for n in ("a", "b", "c")}
    lay, _ = merged(views)
    before = merge.merge(views, lay)
    b = views["b"]
    views_after = {**views, "b": FleetHost("b", "live", merge.apply_delta(b.elements, DELTA))}
    after = {**before, "b": merge.merge({"b": views_after["b"]}, lay)["b"]}
    delta = merge.merged_delta(before, after)
    touched = [e["data"]["id"] for e in delta["added"] + delta["changed"]] + delta["removed"]
    assert touched and all(i.startswith("b/") or i == "fleet:b" for i in touched)
    assert {e["data"]["label"] for e in delta["added"]} >= {"x7a", "x7b"}
    # the merged delta applied to the merged picture is the picture merged afresh
    applied = merge.apply_delta(tuple(merge.flatten(before)), delta)
    assert by_id(list(applied)) == by_id(merge.flatten(after))


def test_apply_delta_matches_the_agents_own_next_graph():
    out = merge.apply_delta(tuple(GRAPH["elements"]), DELTA)
    assert len(out) == len(GRAPH["elements"]) + 2
    removed = merge.apply_delta(out, {"removed": [e["data"]["id"] for e in DELTA["added"]]})
    assert {e["data"]["id"] for e in removed} == {e["data"]["id"] for e in GRAPH["elements"]}


def test_a_stale_host_keeps_its_picture_marked_with_its_age():
    views = {"a": live("a"), "b": FleetHost("b", "stale", tuple(GRAPH["elements"]), stale_since=1000.0)}
    lay = merge.layout(views, None)
    parts = merge.merge(views, lay)
    box = parts["b"][0]
    assert box["data"]["id"] == "fleet:b" and "fleet-stale" in box["classes"]
    assert box["data"]["label"] == "b · stale since " + time.strftime("%H:%M:%S", time.localtime(1000.0))
    assert len(parts["b"]) == len(parts["a"])  # the last picture stays
    assert "fleet-live" in parts["a"][0]["classes"]


def test_doctor_events_sum_and_name_their_host():
    def event(n: int) -> dict:
        return {"type": "doctor", "counts": {"error": 0, "warning": n, "info": 0},
                "findings": [{"id": "forward-unreachable", "severity": "warning", "title": "t",
                              "objects": ["ns-1/if2"]}] * n,
                "verdicts": {"pf:ns-1:tcp:*:8080": {"client": {"outcome": "ok", "reason": ""}}},
                "checked_at": 10.0 + n}
    out = merge.merge_doctor({"a": event(1), "b": event(2)})
    assert out["counts"] == {"error": 0, "warning": 3, "info": 0}
    assert out["hosts"]["b"]["warning"] == 2
    assert [f["host"] for f in out["findings"]] == ["a", "b", "b"]
    assert out["findings"][0]["objects"] == ["a/ns-1/if2"]
    assert set(out["verdicts"]) == {"a/pf:ns-1:tcp:*:8080", "b/pf:ns-1:tcp:*:8080"}


@pytest.mark.parametrize("name,ok", [("host-b", True), ("", False), ("a/b", False), ("x\n", False)])
def test_host_names(name, ok):
    assert merge.valid_name(name) is ok


def test_namespaces_unrelated_to_a_host_stay_out_of_its_box():
    other = [{"group": "nodes", "data": {"id": "ns-9", "kind": "namespace", "label": "other-lab", "parent": None,
                                         "related": False}, "position": {"x": 90000.0, "y": 0.0}},
             {"group": "nodes", "data": {"id": "ns-9/if2", "kind": "veth", "label": "v", "parent": "ns-9",
                                         "netns": "ns-9"}, "position": {"x": 90000.0, "y": 10.0}},
             {"group": "edges", "data": {"id": "veth:x", "source": "ns-9/if2", "target": GRAPH["elements"][0]["data"]["id"],
                                         "kind": "veth"}}]
    views = {"a": live("a", GRAPH["elements"] + other), "b": live("b")}
    _, elements = merged(views)
    assert not any("ns-9" in e["data"]["id"] for e in elements)
    assert boxes(elements)["a"][2] - boxes(elements)["a"][0] == boxes(elements)["b"][2] - boxes(elements)["b"][0]


def test_hosts_not_yet_heard_take_cells_in_name_order_then_keep_them():
    # agents start under their address, then /v1/info renames them: order by the real names
    first = merge.layout({"127.0.0.1:9003": FleetHost("127.0.0.1:9003"), "127.0.0.1:9001": FleetHost("127.0.0.1:9001")}, None)
    renamed = {"node-2": FleetHost("node-2"), "node-1": FleetHost("node-1")}
    assert merge.layout(renamed, first).slots == {"node-1": 0, "node-2": 1}
    # once a host has had a picture its cell is its own, whoever comes later
    lay = merge.layout({"node-2": live("node-2")}, None)
    assert merge.layout({"node-2": live("node-2"), "node-1": FleetHost("node-1")}, lay).slots == {"node-2": 0, "node-1": 1}
