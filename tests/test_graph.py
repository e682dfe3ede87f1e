"""Pure tests of the graph builder and the delta function: no root, hand-built snapshots."""
from __future__ import annotations

import dataclasses

from bridgescope.collector.model import Interface, Masquerade, Namespace, PortForward, Snapshot
from bridgescope.collector.render.graph import diff_elements, portforward_id, to_elements


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
    pf = PortForward("ns-1", "tcp", None, 8080, "172.17.0.2", 80, "docker", "nft", container="ns-10")
    masq = Masquerade("ns-1", "172.17.0.0/16", "docker0", "docker", "nft")
    return Snapshot(tuple(nss), tuple(ifs), port_forwards=(pf, pf), masquerades=(masq,), host="ns-1")


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
    assert nodes[0]["data"]["label"] == "tcp 8080 → 80" and nodes[0]["data"]["parent"] == "ns-1"
    assert by_id(els)[f"edge:{pf_id}"]["data"]["target"] == "ns-10/if2"


def test_masquerade_hangs_off_the_bridge_it_lets_out():
    els = by_id(to_elements(topology()))
    masq = els["masq:ns-1:172.17.0.0/16:docker0"]
    assert masq["data"]["kind"] == "masquerade" and masq["data"]["owner"] == "docker"
    assert els["edge:masq:ns-1:172.17.0.0/16:docker0"]["data"]["source"] == "ns-1/if2"


def test_show_loopback():
    els = by_id(to_elements(topology(), show_loopback=True))
    assert els["ns-10/if1"]["data"]["kind"] == "loopback"


def test_every_node_has_a_position_and_it_is_deterministic():
    a, b = to_elements(topology(30)), to_elements(topology(30))
    assert a == b
    for e in a:
        if e["group"] == "nodes":
            assert set(e["position"]) == {"x", "y"}
    # the host sits in the middle, containers around it
    els = by_id(a)
    assert els["ns-1"]["position"] == {"x": 0.0, "y": 0.0}
    radii = {round((els[f"ns-{10 + n}"]["position"]["x"] ** 2 + els[f"ns-{10 + n}"]["position"]["y"] ** 2) ** 0.5)
             for n in range(30)}
    assert min(radii) > 0


def test_boxes_do_not_share_positions():
    els = to_elements(topology(60))
    spots = [(e["position"]["x"], e["position"]["y"]) for e in els
             if e["group"] == "nodes" and e["data"]["kind"] == "namespace"]
    assert len(spots) == len(set(spots))


def test_adding_a_namespace_at_the_end_moves_no_other_namespace():
    small, big = to_elements(topology(10)), to_elements(topology(11))
    delta = diff_elements(small, big)
    added = {e["data"]["id"] for e in delta["added"]}
    assert "ns-20" in added and "ns-20/if2" in added
    moved_boxes = [e["data"]["id"] for e in delta["changed"] if e["data"]["kind"] == "namespace"]
    assert moved_boxes == []


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
    assert changed["pf:ns-1:tcp:*:8080"]["label"] == "tcp 8080 → 81"
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


def test_patch_equals_a_full_rebuild_for_an_address_change():
    from bridgescope.collector.render.graph import patch_elements
    old_snap = topology(20)
    old = to_elements(old_snap)
    new_snap = _with_interface(old_snap, "ns-17/if2", addresses=("172.17.0.77/16",), state="down")
    patched = patch_elements(old, new_snap, {"ns-17"})
    assert patched is not None
    elements, delta = patched
    assert elements == to_elements(new_snap)
    assert delta == diff_elements(old, elements)
    assert [e["data"]["id"] for e in delta["changed"]] == ["ns-17/if2"]


def test_patch_of_an_unchanged_namespace_is_an_empty_delta():
    from bridgescope.collector.render.graph import patch_elements
    snap = topology(5)
    old = to_elements(snap)
    elements, delta = patch_elements(old, snap, {"ns-12", "ns-1"})
    assert elements is old and delta == {"added": [], "removed": [], "changed": []}


def test_patch_gives_up_when_the_layout_must_change():
    from bridgescope.collector.render.graph import patch_elements
    snap = topology(5)
    old = to_elements(snap)
    moved = _with_interface(snap, "ns-1/if3", master=None)  # a port leaves the bridge
    assert patch_elements(old, moved, {"ns-1"}) is None


def test_patch_places_a_new_interface_and_moves_nothing():
    from bridgescope.collector.render.graph import patch_elements
    snap = topology(5)
    old = to_elements(snap)
    extra = Interface("ns-12/if3", "ns-12", "eth1", 3, "veth", "up", 1500, None)
    grown = dataclasses.replace(snap, interfaces=snap.interfaces + (extra,))
    elements, delta = patch_elements(old, grown, {"ns-12"})
    assert [e["data"]["id"] for e in delta["added"]] == ["ns-12/if3"] and not delta["changed"]
    before = {e["data"]["id"]: e.get("position") for e in old}
    assert all(e.get("position") == before[e["data"]["id"]] for e in elements if e["data"]["id"] in before)
    assert {e["data"]["id"] for e in elements} == {e["data"]["id"] for e in to_elements(grown)}


def test_veth_edge_emitted_by_the_untouched_end_is_kept():
    from bridgescope.collector.render.graph import patch_elements
    snap = topology(3)
    old = to_elements(snap)
    # the edge "veth:ns-1/if3--ns-10/if2" is emitted from the host side; patch only the container
    new = _with_interface(snap, "ns-10/if2", mtu=9000)
    elements, delta = patch_elements(old, new, {"ns-10"})
    assert elements == to_elements(new)
    assert any(e["data"]["id"] == "veth:ns-1/if3--ns-10/if2" for e in elements)
