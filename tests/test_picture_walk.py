"""The walk's packet path lights up elements of the picture: every id the "way out" step
names must be drawn, the MASQUERADE among them (an edge from the bridge to the uplink)."""
from __future__ import annotations

import pytest
from conftest import sandbox_lab

from bridgescope.collector.packetpath import namespace_by_name, trace_live
from bridgescope.collector.render.graph import to_elements

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lab(run_prefix):
    with sandbox_lab(run_prefix) as info:
        yield info


def test_the_way_out_names_the_drawn_masquerade_edge(lab):
    from bridgescope.plumbing.lab.probe import lab_snapshot
    snap = lab_snapshot(lab.host, lab.prefix)
    c1 = namespace_by_name(snap, f"{lab.host}-c1")
    path = trace_live(snap, c1.id, lab.internet_ip, 80)
    drawn = {e["data"]["id"]: e for e in to_elements(snap, slots=None)}
    way_out = [s for s in path.steps if s.kind == "nat" and "MASQUERADE" in s.text]
    assert len(way_out) == 1 and way_out[0].elements
    for element_id in way_out[0].elements:
        assert element_id in drawn, f"the walk would light {element_id}, which the picture does not draw"
    edge = drawn[way_out[0].elements[0]]
    assert edge["group"] == "edges" and edge["data"]["kind"] == "masquerade"
    assert set(path.elements) >= set(way_out[0].elements)  # what the walk sends to the page
