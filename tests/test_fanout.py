"""GraphFanout: the contract every live source (Watcher, walk lab, test fakes) relies on."""
from bridgescope.collector.live.fanout import GraphFanout


def delta(version: int) -> dict:
    return {"type": "delta", "version": version, "added": [], "removed": [], "changed": []}


def test_a_subscriber_gets_the_whole_graph_first_then_deltas():
    fan = GraphFanout(limit=10)
    q = fan.subscribe(3, [{"data": {"id": "a"}}])
    fan.publish(delta(4), [{"data": {"id": "a"}}])
    assert q.get_nowait() == {"type": "graph", "version": 3, "elements": [{"data": {"id": "a"}}]}
    assert q.get_nowait()["version"] == 4 and q.empty()


def test_a_subscriber_that_falls_behind_starts_over_with_the_graph():
    fan = GraphFanout(limit=2)
    slow, fast = fan.subscribe(1, []), fan.subscribe(1, [])
    fast.get_nowait()
    elements = [{"data": {"id": "b"}}]
    for version in (2, 3):
        fan.publish(delta(version), elements)
        if version == 2:
            fast.get_nowait()
    # slow held the graph + delta 2 when delta 3 came: it is reset to the graph at version 3
    assert slow.get_nowait() == {"type": "graph", "version": 3, "elements": elements}
    assert slow.empty()
    assert fast.get_nowait()["version"] == 3


def test_unsubscribed_queues_get_nothing_and_close_ends_every_stream():
    fan = GraphFanout(limit=1)
    gone, stays = fan.subscribe(1, []), fan.subscribe(1, [])
    fan.unsubscribe(gone)
    fan.unsubscribe(gone)  # twice is harmless
    assert len(fan) == 1
    fan.publish(delta(2), [])
    gone.get_nowait()
    assert gone.empty()
    fan.close()
    assert stays.get_nowait() is None and len(fan) == 0
