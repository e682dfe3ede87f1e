"""incremental.advance replayed on reads recorded from real namespaces (no root, no kernel).

tests/data/live_reads.json holds, per stage of a short story (tests/live_recording.py), every
namespace's read: a host with br0 and container c1; a bridge br1 added in the host; an
address added in c1; container c2 plugged in; c2 gone.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from live_recording import load

from bridgescope.collector.kernel.snapshot import assemble
from bridgescope.collector.live.incremental import LiveState, Reads, advance, needs_nsids
from bridgescope.collector.render.graph import to_elements

STAGES = load(str(Path(__file__).parent / "data" / "live_reads.json"))
HOST = next(n for n, ns in STAGES["start"]["namespaces"].items() if ns.is_host)
C1 = next(n for n, ns in STAGES["start"]["namespaces"].items() if ns.name.endswith("-c1"))
C2 = next(n for n, ns in STAGES["container"]["namespaces"].items() if ns.name.endswith("-c2"))


def started() -> LiveState:
    s = STAGES["start"]
    picture, _ = advance(LiveState(firewall=False), Reads(taken_at=1.0, namespaces=s["namespaces"],
                                                        dumps=s["reads"], nsids=s["nsids"]))
    return picture


def step(picture: LiveState, stage: str, ns_ids: list[str], *, discovery: bool = False):
    s = STAGES[stage]
    return advance(picture, Reads(taken_at=2.0, namespaces=s["namespaces"] if discovery else None,
                                  dumps={n: s["reads"][n] for n in ns_ids},
                                  nsids={n: s["nsids"][n] for n in ns_ids if n in s["nsids"]}))


def one_shot(stage: str):
    s = STAGES[stage]
    order = sorted(s["namespaces"].values(), key=lambda ns: (not ns.is_host, ns.inode))
    return assemble(order, s["reads"], s["nsids"], taken_at=2.0)


def labels(elements: list[dict]) -> set[str]:
    return {e["data"].get("label", e["data"]["id"]) for e in elements}


def positions(elements: list[dict]) -> dict[str, dict]:
    return {e["data"]["id"]: e["position"] for e in elements if "position" in e}


def test_first_round_is_the_one_shot_scan():
    picture = started()
    assert dataclasses.replace(picture.snapshot, taken_at=2.0) == one_shot("start")
    assert picture.elements == to_elements(picture.snapshot)


def test_nothing_new_read_is_an_empty_delta():
    picture = started()
    after, delta = step(picture, "start", [HOST, C1])
    assert delta == {"added": [], "removed": [], "changed": []}
    assert after.elements == picture.elements


def test_a_bridge_added_is_one_added_node_and_nothing_moves():
    """The cost of a delta follows the change: the host's other children keep their places."""
    picture = started()
    after, delta = step(picture, "bridge", [HOST])
    assert [e["data"]["label"] for e in delta["added"]] == ["br1"]
    # only the host's own box changes, and only where its centre is (it makes room for the
    # new bridge); no node moves
    assert delta["removed"] == [] and [e["data"]["id"] for e in delta["changed"]] == [HOST]
    assert delta["changed"][0]["data"] == next(e["data"] for e in picture.elements if e["data"]["id"] == HOST)
    assert "position" in delta["added"][0]
    kept = {k: v for k, v in positions(after.elements).items() if k in positions(picture.elements)}
    assert {k: v for k, v in kept.items() if k != HOST} \
        == {k: v for k, v in positions(picture.elements).items() if k != HOST}
    assert dataclasses.replace(after.snapshot, taken_at=2.0) == one_shot("bridge")


def test_an_address_added_is_one_changed_interface():
    picture, _ = step(started(), "bridge", [HOST])
    after, delta = step(picture, "address", [C1])
    assert delta["added"] == [] and delta["removed"] == []
    [eth0] = delta["changed"]
    assert eth0["data"]["label"] == "eth0" and "10.50.0.9/24" in eth0["data"]["addresses"]


def test_a_container_plugged_in_then_gone():
    picture, _ = step(started(), "address", [HOST, C1])
    assert needs_nsids(picture, {HOST: STAGES["container"]["reads"][HOST],
                                 C2: STAGES["container"]["reads"][C2]}) == [HOST, C2]
    plugged, delta = step(picture, "container", [HOST, C2], discovery=True)
    assert {"eth0", "vc2", STAGES["container"]["namespaces"][C2].name} <= labels(delta["added"])
    assert any(e["data"]["kind"] == "veth" for e in delta["added"])
    assert dataclasses.replace(plugged.snapshot, taken_at=2.0) == one_shot("container")
    gone, delta = step(plugged, "gone", [HOST], discovery=True)
    assert C2 in delta["removed"] and all(not r.startswith(C2 + "/") for r in labels(gone.elements))
    vc2 = next(i for i in gone.snapshot.interfaces if i.name == "vc2")
    assert vc2.peer is None  # its far end went with c2
    assert C2 not in gone.parts and C2 not in gone.reads and C2 not in gone.pointing
    assert all(C2 not in m.values() for m in gone.nsids.values())


def test_a_namespace_renamed_is_one_changed_namespace_node():
    """A namespace whose ip-netns name went while a process still holds it stays, renamed."""
    picture = started()
    s = STAGES["start"]
    renamed = {**s["namespaces"], C1: dataclasses.replace(s["namespaces"][C1], name="pid 4242", paths=())}
    after, delta = advance(picture, Reads(taken_at=2.0, namespaces=renamed))
    assert [(e["data"]["id"], e["data"]["label"]) for e in delta["changed"]] == [(C1, "pid 4242")]
    assert delta["added"] == [] and delta["removed"] == []


def test_the_picture_is_not_changed_by_advancing():
    picture = started()
    elements, snapshot = list(picture.elements), picture.snapshot
    step(picture, "container", [HOST, C2], discovery=True)
    assert picture.elements == elements and picture.snapshot is snapshot


@pytest.mark.parametrize("stage", ["bridge", "address", "container", "gone"])
def test_a_full_round_equals_the_one_shot_scan(stage):
    s = STAGES[stage]
    after, _ = advance(started(), Reads(taken_at=2.0, namespaces=s["namespaces"], dumps=s["reads"],
                                        nsids=s["nsids"], full=True))
    assert after.snapshot == one_shot(stage)
    assert after.elements == to_elements(after.snapshot)


def test_a_link_removed_is_one_removed_node():
    picture, _ = step(started(), "bridge", [HOST])
    br1 = next(i.id for i in picture.snapshot.interfaces if i.name == "br1")
    after, delta = step(picture, "start", [HOST])
    # only the host's own box changes, where its centre is (it gives the bridge's room back)
    assert delta["added"] == [] and delta["removed"] == [br1]
    assert [e["data"]["id"] for e in delta["changed"]] == [HOST]
    assert dataclasses.replace(after.snapshot, taken_at=2.0) == one_shot("start")


def test_elements_follow_the_one_shot_ids_through_the_story():
    picture = started()
    for stage, ns_ids, discovery in [("bridge", [HOST], False), ("address", [C1], False),
                                     ("container", [HOST, C2], True), ("gone", [HOST], True),
                                     ("start", [HOST, C1], False)]:
        picture, _ = step(picture, stage, ns_ids, discovery=discovery)
        ids = {e["data"]["id"] for e in picture.elements}
        assert ids == {e["data"]["id"] for e in to_elements(picture.snapshot)}, stage


def test_events_recorded_in_the_kernel_bring_the_dump_to_the_next_one():
    """The Watcher applies link/address events to its cached dump instead of re-dumping."""
    from bridgescope.collector.kernel.netlink import apply_events
    before, after = STAGES["start"]["reads"][HOST].dump, STAGES["bridge"]["reads"][HOST].dump
    applied = apply_events(before, STAGES["bridge"]["events"]["host"])
    assert applied is not None
    dump, netconf = applied
    assert dump == after and netconf  # a new device announces its netconf: the sysctls are re-read


def test_an_address_event_applies_and_its_local_route_is_ignored():
    from bridgescope.collector.kernel.netlink import apply_events
    before = STAGES["bridge"]["reads"][C1].dump
    applied = apply_events(before, STAGES["address"]["events"]["c1"])  # NEWADDR, then a local-table route
    assert applied is not None and applied[0] == STAGES["address"]["reads"][C1].dump


def _route_event(mtype: int, flags: int = 0) -> bytes:
    import socket

    from bridgescope.collector.kernel import rtnl
    body = rtnl._RTMSG.pack(socket.AF_INET, 24, 0, 0, rtnl.RT_TABLE_MAIN, 2, 253, 1, 0)
    body += rtnl._attr(1, socket.inet_aton("10.99.0.0")) + rtnl._attr(4, (2).to_bytes(4, "little"))
    return rtnl.request(mtype, flags, 0, body)


def test_a_main_table_route_event_applies_and_a_replace_asks_for_a_dump():
    from bridgescope.collector.kernel import rtnl
    from bridgescope.collector.kernel.netlink import apply_events
    dump = STAGES["start"]["reads"][C1].dump
    added, _ = apply_events(dump, [_route_event(rtnl.RTM_NEWROUTE)])
    [new] = [r for r in added.routes if r not in dump.routes]
    assert (new.dst, new.oif, new.family) == ("10.99.0.0/24", 2, 4)
    assert apply_events(added, [_route_event(rtnl.RTM_DELROUTE)])[0] == dump
    assert apply_events(dump, [_route_event(rtnl.RTM_NEWROUTE, rtnl.NLM_F_REPLACE)]) is None


def test_processes_coming_and_going_redraw_nothing():
    """The host namespace's pids change at every discovery; the snapshot follows, the picture
    needs no work."""
    picture = started()
    s = STAGES["start"]
    moved = {**s["namespaces"], HOST: dataclasses.replace(s["namespaces"][HOST], pids=(1, 4242))}
    after, delta = advance(picture, Reads(taken_at=2.0, namespaces=moved))
    assert delta == {"added": [], "removed": [], "changed": []}
    assert after.elements is picture.elements
    assert after.snapshot.namespace(HOST).pids == (1, 4242)


def test_routes_follow_a_route_event_and_are_kept_when_no_route_changed():
    """A host with a thousand veths has a thousand link-local routes: a bridge added must not
    build them all again, and a route that came must reach the snapshot."""
    from bridgescope.collector.kernel import rtnl
    from bridgescope.collector.kernel.netlink import apply_events
    picture = started()
    after, _ = step(picture, "bridge", [HOST])
    assert after.parts[HOST].routes is picture.parts[HOST].routes
    added, _ = apply_events(picture.reads[C1].dump, [_route_event(rtnl.RTM_NEWROUTE)])
    routed, _ = advance(picture, Reads(taken_at=2.0, dumps={C1: dataclasses.replace(picture.reads[C1], dump=added)}))
    assert [r.dst for r in routed.snapshot.routes if r.netns == C1 and r not in picture.snapshot.routes] \
        == ["10.99.0.0/24"]
