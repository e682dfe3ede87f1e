"""Pure tests of the graph builder and the delta function: no root, hand-built snapshots."""
from __future__ import annotations

import dataclasses

import pytest

from bridgescope.collector.model import (
    Interface,
    Masquerade,
    Namespace,
    PortForward,
    Route,
    Snapshot,
    portforward_id,
)
from bridgescope.collector.render import graph, layout
from bridgescope.collector.render import slots as stored
from bridgescope.collector.render.drawing import Drawing
from bridgescope.collector.render.graph import (
    build_elements,
    diff_elements,
    to_elements,
)
from bridgescope.collector.render.slots import Slots


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts as a freshly started server: no slots remembered."""
    monkeypatch.setattr(stored, "_REMEMBERED", {})


def topology(containers: int = 2) -> Snapshot:
    host = Namespace("ns-1", "host", 1, is_host=True)
    nss = [host] + [Namespace(f"ns-{10 + n}", f"c{n:03d}", 10 + n) for n in range(containers)]
    ifs = [Interface("ns-1/if1", "ns-1", "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",)),
           Interface("ns-1/if2", "ns-1", "docker0", 2, "bridge", "up", 1500, "02:42:00:00:00:01", ("172.17.0.1/16",))]
    for n in range(containers):
        cid = f"ns-{10 + n}"
        ifs.append(Interface(f"ns-1/if{3 + n}", "ns-1", f"veth{n}", 3 + n, "veth", "up", 1500, None,
                             master="ns-1/if2", peer=f"{cid}/if2"))
        ifs.append(Interface(f"{cid}/if2", cid, "eth0", 2, "veth", "up", 1500, None, (f"172.17.0.{2 + n}/16",),
                             peer=f"ns-1/if{3 + n}"))
        ifs.append(Interface(f"{cid}/if1", cid, "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",)))
    ifs.append(Interface("ns-1/if900", "ns-1", "eth0", 900, "physical", "up", 1500, None, ("198.18.0.2/24",)))
    pf = PortForward("ns-1", "tcp", None, 8080, "172.17.0.2", 80, "docker", "nft", container="ns-10")
    masq = Masquerade("ns-1", "172.17.0.0/16", "docker0", "docker", "nft")
    hairpin = Masquerade("ns-1", "172.17.0.2/32", None, "docker", "nft", destination="172.17.0.2/32")
    localhost = Masquerade("ns-1", None, None, "bridgescope", "nft", out="docker0")
    route = Route("ns-1", "default", "198.18.0.1", "eth0", "ns-1/if900")
    return Snapshot(tuple(nss), tuple(ifs), routes=(route,), port_forwards=(pf, pf),
                    masquerades=(masq, hairpin, localhost), host="ns-1")


def by_id(elements: list[dict]) -> dict[str, dict]:
    return {e["data"]["id"]: e for e in elements}


def test_nodes_edges_and_ids():
    els = by_id(to_elements(topology()))
    assert els["ns-1"]["data"]["kind"] == "namespace" and els["ns-1"]["data"]["is_host"] is True
    assert els["ns-10/if2"]["data"]["parent"] == "ns-10" and els["ns-10/if2"]["data"]["kind"] == "veth"
    assert "ns-1/if1" not in els and "ns-10/if1" not in els  # loopback hidden by default
    assert els["veth:ns-1/if3--ns-10/if2"]["data"]["kind"] == "veth"
    assert els["member:ns-1/if3"]["data"] | {} == {"id": "member:ns-1/if3", "source": "ns-1/if3",
                                                   "target": "ns-1/if2", "kind": "member", "owner": "docker"}
    assert els["ns-1/if2"]["data"]["owner"] == "docker"


def test_portforward_node_points_at_the_container_interface_once():
    els = to_elements(topology())
    pf_id = "pf:ns-1:tcp:*:8080"
    assert portforward_id(topology().port_forwards[0]) == pf_id
    nodes = [e for e in els if e["data"]["id"] == pf_id]
    assert len(nodes) == 1  # duplicated rules (two backends) -> one node
    # a badge in the container's box, saying where it listens (any host address) and where it goes
    assert nodes[0]["data"]["label"] == "tcp *:8080\n→ :80" and nodes[0]["data"]["parent"] == "ns-10"
    assert nodes[0]["data"]["netns"] == "ns-1"
    assert by_id(els)[f"edge:{pf_id}"]["data"]["target"] == "ns-10/if2"


def test_masquerade_is_the_edge_from_the_bridge_up_to_the_uplink():
    els = to_elements(topology())
    masq = by_id(els)["masq:ns-1:172.17.0.0/16:docker0"]
    assert masq["group"] == "edges" and masq["data"]["kind"] == "masquerade"
    assert (masq["data"]["source"], masq["data"]["target"]) == ("ns-1/if2", "ns-1/if900")
    assert masq["data"]["label"] == "MASQUERADE 172.17.0.0/16"
    # the hairpin and localhost rules are no free-floating elements: they are in the forward's panel
    assert [e["data"]["id"] for e in els if e["data"]["kind"] == "masquerade"] == [masq["data"]["id"]]
    served = graph.served_masquerades(topology(), topology().port_forwards[0])
    assert {m.source for m in served} == {"172.17.0.2/32", None}


def test_docker_shape_uplinks_over_bridges_over_containers_inside_the_host():
    els = by_id(to_elements(topology(3)))
    y = {i: els[i]["position"]["y"] for i in ("ns-1/if900", "ns-1/if2", "ns-10/if2")}
    assert y["ns-1/if900"] < y["ns-1/if2"] < y["ns-10/if2"]
    assert els["ns-10"]["data"]["parent"] == "ns-1/if2"  # the container's box sits in its bridge's box
    assert els["ns-1/if2"]["data"]["parent"] == "ns-1"  # which sits in the host's
    assert els["ns-1/if3"]["data"]["parent"] == "ns-1/if2" and els["ns-1/if3"]["data"]["port"] is True
    assert els["ns-1/if900"]["data"]["uplink"] is True


def test_containers_are_labelled_by_their_container_name():
    snap = topology(2)
    snap = dataclasses.replace(snap, interfaces=tuple(
        dataclasses.replace(i, alias="bridgescope:ctr/web") if i.id == "ns-1/if3" else i for i in snap.interfaces))
    els = by_id(to_elements(snap))
    assert els["ns-10"]["data"]["label"] == "web" and els["ns-10"]["data"]["ns_name"] == "c000"
    assert els["ns-11"]["data"]["label"] == "c001"  # nothing better than the namespace's name


def test_other_namespaces_stand_beside_the_host_never_on_it():
    snap = topology(3)
    lab = Namespace("ns-5", "inet", 5)
    peer = Interface("ns-5/if2", "ns-5", "to-host", 2, "veth", "up", 1500, None, peer="ns-1/if900")
    snap = dataclasses.replace(snap, namespaces=snap.namespaces + (lab, Namespace("ns-6", "elsewhere", 6)),
                               interfaces=snap.interfaces + (peer,))
    els = by_id(to_elements(snap))
    host_xs = [e["position"]["x"] for e in els.values() if e["group"] == "nodes" and e["data"]["parent"]]
    assert els["ns-5/if2"]["position"]["x"] < min(x for x in host_xs if x != els["ns-5/if2"]["position"]["x"])
    assert els["ns-5"]["data"]["related"] is True and els["ns-6"]["data"]["related"] is False
    assert els["ns-5"]["data"]["parent"] is None


def test_show_loopback():
    els = by_id(to_elements(topology(), show_loopback=True))
    assert els["ns-10/if1"]["data"]["kind"] == "loopback"


def test_every_node_has_a_position_and_it_is_deterministic():
    a = to_elements(topology(30))
    stored._REMEMBERED.clear()  # another server process, same snapshot: same picture
    b = to_elements(topology(30))
    assert a == b
    for e in a:
        if e["group"] == "nodes":
            assert set(e["position"]) == {"x", "y"}


def cells(elements: list[dict]) -> list[tuple[float, float, float, float]]:
    """Each container's cell as the box its contents span (left, top, right, bottom)."""
    inside: dict[str, list[dict]] = {}
    for e in elements:
        if e["group"] == "nodes" and e["data"]["kind"] != "namespace":
            inside.setdefault(e["data"]["parent"], []).append(e["position"])
    out = []
    for e in elements:
        if e["group"] == "nodes" and e["data"]["kind"] == "namespace" and e["data"].get("container"):
            pts = inside[e["data"]["id"]]
            out.append((min(p["x"] for p in pts), min(p["y"] for p in pts), max(p["x"] for p in pts), max(p["y"] for p in pts)))
    return out


@pytest.mark.parametrize("n", [3, 60, 500])
def test_container_boxes_keep_their_distance(n):
    boxes = sorted(cells(to_elements(topology(n))))
    assert len(boxes) == n
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:i + 40]:
            apart_x = b[0] - a[2] >= layout.CELL_W - 100 or a[0] - b[2] >= layout.CELL_W - 100
            apart_y = abs(b[1] - a[1]) >= layout.CELL_H - 1
            assert apart_x or apart_y, (a, b)


def test_a_container_coming_or_going_moves_no_other():
    full = topology(12)
    before = by_id(to_elements(full))
    # c003 goes away; then c999 arrives (sorting first by name would shift everybody)
    gone = dataclasses.replace(full, namespaces=tuple(n for n in full.namespaces if n.id != "ns-13"),
                               interfaces=tuple(i for i in full.interfaces if i.netns != "ns-13" and i.id != "ns-1/if6"))
    after_gone = by_id(to_elements(gone))
    newcomer = dataclasses.replace(topology(1), namespaces=(Namespace("ns-99", "a-first-by-name", 99),))
    extra_ifs = tuple(dataclasses.replace(i, id=i.id.replace("ns-10", "ns-99").replace("if3", "if99"), netns=i.netns.replace("ns-10", "ns-99"),
                                          peer=(i.peer or "").replace("ns-10", "ns-99").replace("if3", "if99") or None)
                      for i in topology(1).interfaces if i.netns == "ns-10" or i.id == "ns-1/if3")
    grown = dataclasses.replace(gone, namespaces=gone.namespaces + newcomer.namespaces, interfaces=gone.interfaces + extra_ifs)
    after_grown = by_id(to_elements(grown))
    for ns in (f"ns-{10 + k}" for k in range(12) if k != 3):
        for i in (ns, f"{ns}/if2"):
            assert before[i]["position"] == after_gone[i]["position"] == after_grown[i]["position"], i
    # the newcomer takes the freed cell: nothing lands on anything
    assert after_grown["ns-99/if2"]["position"] == before["ns-13/if2"]["position"]


def test_slots_are_a_pure_input_and_output():
    snap = topology(4)
    els, slots = build_elements(snap, Slots())
    assert slots.bridges == (("docker0", 3),)
    assert sorted(c[1] for c in slots.cells) == ["c000", "c001", "c002", "c003"]
    again, same = build_elements(snap, slots)
    assert again == els and same == slots
    assert stored._REMEMBERED == {}  # explicit slots: the process memory is left alone


def test_diff_elements_added_removed_changed():
    old = to_elements(topology())
    snap = topology()
    pf = dataclasses.replace(snap.port_forwards[0], to_port=81)
    snap = dataclasses.replace(snap, port_forwards=(pf,), interfaces=tuple(
        dataclasses.replace(i, addresses=("172.17.0.99/16",)) if i.id == "ns-11/if2" else i
        for i in snap.interfaces))
    delta = diff_elements(old, to_elements(snap))
    changed = {e["data"]["id"]: e["data"] for e in delta["changed"]}
    assert set(changed) == {"ns-11/if2", "pf:ns-1:tcp:*:8080"}
    assert changed["ns-11/if2"]["addresses"] == ["172.17.0.99/16"]
    assert changed["pf:ns-1:tcp:*:8080"]["label"] == "tcp *:8080\n→ :81"
    assert delta["added"] == [] and delta["removed"] == []


def test_diff_elements_removed_ids():
    old = to_elements(topology())
    snap = topology()
    snap = dataclasses.replace(snap, namespaces=snap.namespaces[:-1], interfaces=tuple(
        dataclasses.replace(i, peer=None) if i.id == "ns-1/if4" else i
        for i in snap.interfaces if i.netns != "ns-11"))
    delta = diff_elements(old, to_elements(snap))
    assert set(delta["removed"]) == {"ns-11", "ns-11/if2", "veth:ns-1/if4--ns-11/if2"}


def test_diff_of_identical_lists_is_empty():
    els = to_elements(topology())
    assert diff_elements(els, [dict(e) for e in els]) == {"added": [], "removed": [], "changed": []}


def _with_interface(snap: Snapshot, if_id: str, **changes) -> Snapshot:
    return dataclasses.replace(snap, interfaces=tuple(
        dataclasses.replace(i, **changes) if i.id == if_id else i for i in snap.interfaces))


def _ids(items: list) -> list[str]:
    return sorted(e if isinstance(e, str) else e["data"]["id"] for e in items)


def patched(before: Snapshot, after: Snapshot, ns_ids=(), *, only=(), whole=()) -> tuple[list[dict], dict]:
    """patch_elements from `before`'s drawing to `after`, checked against drawing `after` anew."""
    from bridgescope.collector.render.graph import drawn, patch_elements
    old, layout = drawn(before)
    elements, delta, _ = patch_elements(old, layout, after, ns_ids, only=only, whole=whole)
    full = to_elements(after)
    assert by_id(elements) == by_id(full)
    expected = diff_elements(old, full)
    assert {k: _ids(v) for k, v in delta.items()} == {k: _ids(v) for k, v in expected.items()}
    groups = [e["group"] for e in elements]
    assert groups == sorted(groups, key=lambda g: g == "edges"), "nodes come before edges"
    return elements, delta


def moved(old: list[dict], new: list[dict]) -> list[str]:
    before = {e["data"]["id"]: e.get("position") for e in old}
    return [e["data"]["id"] for e in new if e["data"]["id"] in before and e.get("position") != before[e["data"]["id"]]]


def test_patch_equals_a_full_rebuild_for_an_address_change():
    old_snap = topology(20)
    new_snap = _with_interface(old_snap, "ns-17/if2", addresses=("172.17.0.77/16",), state="down")
    _, delta = patched(old_snap, new_snap, {"ns-17"}, only={"ns-17/if2"})
    assert [e["data"]["id"] for e in delta["changed"]] == ["ns-17/if2"]


def test_patch_of_an_unchanged_namespace_is_an_empty_delta():
    snap = topology(5)
    elements, delta = patched(snap, snap, {"ns-12", "ns-1"}, whole={"ns-12", "ns-1"})
    assert elements == to_elements(snap) and delta == {"added": [], "removed": [], "changed": []}


def test_a_port_leaving_its_bridge_is_patched_and_the_container_moves_out():
    """The plan says the container no longer sits under the bridge: the patch redraws it too,
    although only the host's port was named as touched."""
    snap = topology(5)
    _, delta = patched(snap, _with_interface(snap, "ns-1/if3", master=None), {"ns-1"}, only={"ns-1/if3"})
    assert "ns-10" in _ids(delta["changed"])


def test_a_new_interface_is_drawn_and_moves_nothing():
    snap = topology(5)
    old = to_elements(snap)
    extra = Interface("ns-12/if3", "ns-12", "eth1", 3, "veth", "up", 1500, None)
    elements, delta = patched(snap, dataclasses.replace(snap, interfaces=snap.interfaces + (extra,)),
                              {"ns-12"}, only={"ns-12/if3"})
    assert _ids(delta["added"]) == ["ns-12/if3"]
    assert moved(old, elements) == []


def test_a_bridge_added_is_one_added_node_without_drawing_the_host_again():
    snap = topology(30)
    old = to_elements(snap)
    br = Interface("ns-1/if999", "ns-1", "br-new", 999, "bridge", "up", 1500, None)
    elements, delta = patched(snap, dataclasses.replace(snap, interfaces=snap.interfaces + (br,)),
                              {"ns-1"}, only={"ns-1/if999"})
    assert _ids(delta["added"]) == ["ns-1/if999"]
    assert set(moved(old, elements)) <= {"ns-1"}
    assert set(_ids(delta["changed"])) <= {"ns-1"}


def test_a_container_that_comes_and_goes_is_patched():
    snap = topology(4)
    grown = topology(5)
    patched(snap, grown, {"ns-1", "ns-14"}, only={"ns-1/if7"}, whole={"ns-14"})
    patched(grown, snap, {"ns-1", "ns-14"}, only={"ns-1/if7"}, whole={"ns-14"})


def test_a_namespace_beside_the_host_is_patched():
    snap = topology(3)
    side = Namespace("ns-500", "other-run", 500)
    lo = Interface("ns-500/if1", "ns-500", "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",))
    eth = Interface("ns-500/if2", "ns-500", "eth0", 2, "veth", "up", 1500, None)
    grown = dataclasses.replace(snap, namespaces=snap.namespaces + (side,), interfaces=snap.interfaces + (lo, eth))
    _, delta = patched(snap, grown, {"ns-500"}, whole={"ns-500"})
    assert _ids(delta["added"]) == ["ns-500", "ns-500/if2"]
    patched(grown, snap, {"ns-500"}, whole={"ns-500"})


def test_veth_edge_emitted_by_the_untouched_end_is_kept():
    snap = topology(3)
    # the edge "veth:ns-1/if3--ns-10/if2" is emitted from the host side; patch only the container
    elements, _ = patched(snap, _with_interface(snap, "ns-10/if2", mtu=9000), {"ns-10"}, only={"ns-10/if2"})
    assert any(e["data"]["id"] == "veth:ns-1/if3--ns-10/if2" for e in elements)


# A box spans its items, their labels and its padding: this far either side of an item's centre
# for a 13-character address (measured in Chromium: 127 px wide for 172.17.11.241), this far
# above (the box's title included) and below (two label lines).
BOX_HALF, BOX_ABOVE, BOX_BELOW = 64, 45, 56
PORT_HALF = 10


@pytest.mark.parametrize("extra", [0, 1, 2, 4])
def test_every_box_keeps_clear_of_its_port_and_its_neighbours(extra):
    snap = topology(7)
    more = tuple(Interface(f"ns-12/if{10 + k}", "ns-12", f"eth{k + 1}", 10 + k, "veth", "up", 1500, None,
                           (f"10.{k}.255.255/16",)) for k in range(extra))  # 12 characters
    els = to_elements(dataclasses.replace(snap, interfaces=snap.interfaces + more))
    nodes = {e["data"]["id"]: e for e in els if e["group"] == "nodes"}
    ports = [e["position"] for e in nodes.values() if e["data"].get("port") is True]
    boxes = {}
    for e in nodes.values():
        if e["data"]["parent"] in nodes and nodes[e["data"]["parent"]]["data"].get("container"):
            boxes.setdefault(e["data"]["parent"], []).append(e["position"])
    spans = {ns: (min(p["x"] for p in pts) - BOX_HALF, min(p["y"] for p in pts) - BOX_ABOVE,
                  max(p["x"] for p in pts) + BOX_HALF, max(p["y"] for p in pts) + BOX_BELOW)
             for ns, pts in boxes.items()}
    assert len(spans) == 7
    for ns, (x1, y1, x2, y2) in spans.items():
        for p in ports:
            assert not (x1 < p["x"] + PORT_HALF and p["x"] - PORT_HALF < x2 and y1 < p["y"] < y2), (ns, p)
        for other, (a1, b1, a2, b2) in spans.items():
            assert other == ns or x2 <= a1 or a2 <= x1 or y2 <= b1 or b2 <= y1, (ns, other)


def test_showing_loopback_moves_nothing_else():
    """The page fetches loopback's nodes from a second drawing and adds them to the first."""
    snap = topology(7)
    hidden = {e["data"]["id"]: e.get("position") for e in to_elements(snap) if e["group"] == "nodes"}
    shown = {e["data"]["id"]: e.get("position") for e in to_elements(snap, show_loopback=True) if e["group"] == "nodes"}
    assert {k: shown[k] for k in hidden} == hidden


def _two_bridges(containers: int) -> Snapshot:
    """topology(containers) with a second bridge br1 holding the odd-numbered containers."""
    snap = topology(containers)
    br1 = Interface("ns-1/if800", "ns-1", "br1", 800, "bridge", "up", 1500, None, ("10.9.0.1/16",))
    ifs = [dataclasses.replace(i, master="ns-1/if800") if i.master == "ns-1/if2" and i.ifindex % 2 == 0 else i
           for i in snap.interfaces]
    return dataclasses.replace(snap, interfaces=tuple(ifs) + (br1,))


def _counting_place(monkeypatch) -> list[int]:
    """How many positions each call of graph.place computed."""
    counts: list[int] = []
    real = graph.place
    monkeypatch.setattr(graph, "place", lambda *a, **kw: (counts.append(len(p := real(*a, **kw))), p)[1])
    return counts


def test_a_container_joining_one_bridge_places_its_box_alone(monkeypatch):
    """The work follows the change: a new container's box is placed, not every box of the host."""
    snap = _two_bridges(40)
    grown = _two_bridges(41)
    counts = _counting_place(monkeypatch)
    _, delta = patched(snap, grown, {"ns-1", "ns-50"}, only={"ns-1/if43"}, whole={"ns-50"})
    assert {"ns-50", "ns-50/if2", "ns-1/if43"} <= set(_ids(delta["added"]))
    assert counts[0] > 100  # the first drawing places all
    assert counts[1] < 12, counts  # the box, its port and eth0; bridges, uplinks, forward, host


def _step(before: Snapshot, after: Snapshot) -> tuple[set[str], set[str], set[str]]:
    """(namespaces, interfaces, whole namespaces) a change touched, as the live path names them."""
    old = {i.id: i for i in before.interfaces}
    new = {i.id: i for i in after.interfaces}
    only = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    whole = {n.id for n in before.namespaces} ^ {n.id for n in after.namespaces}
    return {i.split("/", 1)[0] for i in only} | whole, only, whole


def _add(snap: Snapshot, *ifaces: Interface, forwards: tuple[PortForward, ...] = ()) -> Snapshot:
    return dataclasses.replace(snap, interfaces=snap.interfaces + ifaces, port_forwards=snap.port_forwards + forwards)


def _without(snap: Snapshot, *ids: str) -> Snapshot:
    return dataclasses.replace(snap, namespaces=tuple(n for n in snap.namespaces if n.id not in ids),
                               interfaces=tuple(i for i in snap.interfaces
                                                if i.id not in ids and i.netns not in ids and i.peer not in ids))


def test_scoped_relayouts_equal_a_layout_from_scratch_through_a_story():
    """Each change is patched onto the previous patch (never a fresh drawing), and every
    position equals a layout of the same snapshot from scratch with the same remembered slots:
    a container joins a bridge and leaves it, a bridge comes and goes, a box fills past its
    cell so the bridge's cells (and the bridges right of it) grow, then shrinks back."""
    from bridgescope.collector.render.graph import drawn, patch_elements
    start = _two_bridges(12)
    joined = _two_bridges(13)  # ns-22 on br0
    left = _without(joined, "ns-13")  # a container of br1 goes
    br2 = Interface("ns-1/if850", "ns-1", "br2", 850, "bridge", "up", 1500, None)
    bridged = _add(left, br2)
    extra = tuple(Interface(f"ns-12/if{10 + k}", "ns-12", f"eth{k + 1}", 10 + k, "veth", "up", 1500, None)
                  for k in range(4))  # ns-12 sits on br0: five items, two rows of a wider cell
    filled = _add(bridged, *extra)
    forward = PortForward("ns-1", "tcp", None, 9090, "172.17.0.5", 80, "docker", "nft", container="ns-13")
    forwarded = _add(filled, forwards=(dataclasses.replace(forward, to_ip="172.17.0.4", container="ns-12"),))
    emptied = _without(forwarded, *(i.id for i in extra))
    # a namespace beside the host, wired to a container (two hops from the host), then renamed
    side = Namespace("ns-600", "lab-client", 600)
    wire = (Interface("ns-600/if2", "ns-600", "eth0", 2, "veth", "up", 1500, None, peer="ns-14/if9"),
            Interface("ns-14/if9", "ns-14", "eth9", 9, "veth", "up", 1500, None, peer="ns-600/if2"))
    wired = dataclasses.replace(emptied, namespaces=emptied.namespaces + (side,), interfaces=emptied.interfaces + wire)
    renamed = dataclasses.replace(wired, namespaces=tuple(
        dataclasses.replace(n, name="c007-renamed") if n.id == "ns-17" else n for n in wired.namespaces))
    # a second port of ns-16 on br2: the container sits on two bridges
    second = (Interface("ns-1/if860", "ns-1", "vx", 860, "veth", "up", 1500, None, master="ns-1/if850",
                        peer="ns-16/if7"),
              Interface("ns-16/if7", "ns-16", "eth1", 7, "veth", "up", 1500, None, peer="ns-1/if860"))
    two = _add(renamed, *second)
    # a port whose peer is not read yet stands alone over the grid; its container's end arrives
    late = dataclasses.replace(two, namespaces=two.namespaces + (Namespace("ns-700", "c700", 700),))
    stray = _add(late, Interface("ns-1/if870", "ns-1", "vlate", 870, "veth", "up", 1500, None,
                                 master="ns-1/if2", peer="ns-700/if2"))
    arrived = _add(stray, Interface("ns-700/if2", "ns-700", "eth0", 2, "veth", "up", 1500, None, peer="ns-1/if870"))
    story = [start, joined, left, bridged, filled, forwarded, emptied, wired, renamed, two, late, stray, arrived,
             _without(arrived, "ns-600"), no_br1 := _drop_bridge(_without(arrived, "ns-600"), "ns-1/if800"),
             _without(no_br1, "ns-1/if850")]
    elements, layout = drawn(story[0])
    widths = set()
    for before, after in zip(story, story[1:]):
        ns_ids, only, whole = _step(before, after)
        ns_ids |= {n.id for n in after.namespaces if n not in before.namespaces}  # renamed
        elements, delta, layout = patch_elements(elements, layout, after, ns_ids, only=only, whole=whole)
        fresh, scratch = drawn(after, slots=layout.slots)
        assert by_id(elements) == by_id(fresh)
        assert _plan_of(layout) == _plan_of(scratch)
        assert _indexes(layout.drawing) == _indexes(Drawing.of(fresh))
        assert (layout.load, layout.fullest, layout.grid) == (scratch.load, scratch.fullest, scratch.grid)
        widths.add(by_id(fresh)["ns-1/if800"]["position"]["x"] if "ns-1/if800" in by_id(fresh) else None)
    assert len(widths) >= 3  # br1 moved right when br0's cells grew, and back


def _drop_bridge(snap: Snapshot, bridge_id: str) -> Snapshot:
    return dataclasses.replace(snap, interfaces=tuple(
        dataclasses.replace(i, master=None) if i.master == bridge_id else i
        for i in snap.interfaces if i.id != bridge_id))


def _plan_of(pic: layout.Picture) -> dict:
    """What a plan says, without what it keeps to make the next one (the cells remembered in
    the order seated, which differs once a container took a free cell: the same cells)."""
    out = {k: v for k, v in vars(pic).items() if k not in ("plans", "reach", "load", "grid", "fullest", "slots", "drawing")}
    return {**out, "bridges_remembered": pic.slots.bridges, "cells": sorted(pic.slots.cells)}


def _indexes(drawing: Drawing) -> tuple:
    return drawing.nodes.keys(), drawing.edges.keys(), drawing.by_ns, drawing.by_end, drawing.nat
