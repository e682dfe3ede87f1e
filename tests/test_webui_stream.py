"""GET /api/events: whole graph first, then deltas, keepalives, cleanup, a cap on open streams;
and the real Watcher feeding it from a throwaway namespace."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from conftest import sh
from webui_sources import StaticSource, sample_snapshot

from bridgescope.collector.model import Interface
from bridgescope.webui.app import create_app
from bridgescope.webui.stream import format_event

BASE = "http://127.0.0.1:8470"


def app_with(source=None, **config):
    return create_app({"SOURCE": source, "NO_AUTH": True, **config} if source else {"NO_AUTH": True, **config})


def open_stream(app):
    resp = app.test_client().get("/api/events", base_url=BASE, buffered=False)
    return resp, iter(resp.response)


def next_event(chunks) -> tuple[str, dict | str]:
    """The next SSE message: ("comment", text) or (event name, parsed data)."""
    text = next(chunks)
    text = text.decode() if isinstance(text, bytes) else text
    if text.startswith(":"):
        return "comment", text[1:].strip()
    fields = dict(line.split(": ", 1) for line in text.strip().splitlines())
    return fields["event"], {**json.loads(fields["data"]), "_id": fields.get("id")}


def test_sse_message_format():
    assert format_event({"type": "delta", "version": 7, "added": []}) == \
        'id: 7\nevent: delta\ndata: {"type":"delta","version":7,"added":[]}\n\n'


def test_an_event_shared_by_many_streams_is_encoded_once(monkeypatch):
    from bridgescope.webui import stream
    calls = []
    monkeypatch.setattr(stream, "format_event", lambda e: calls.append(e) or f"data: {e['version']}\n\n")
    cache = stream.EncodedEvents(keep=2)
    event = {"type": "delta", "version": 3}
    assert [cache.text(event) for _ in range(50)] == ["data: 3\n\n"] * 50 and len(calls) == 1
    other = {"type": "delta", "version": 3}  # equal but not the same object: encoded anew
    cache.text(other), cache.text({"type": "delta", "version": 4}), cache.text(event)
    assert len(calls) == 4  # the first one was evicted (keep=2)


def test_stream_sends_the_graph_then_deltas_then_cleans_up():
    src = StaticSource(sample_snapshot())
    resp, chunks = open_stream(app_with(src))
    assert resp.mimetype == "text/event-stream"
    assert resp.headers["X-Accel-Buffering"] == "no" and resp.headers["Cache-Control"] == "no-cache"
    assert next_event(chunks) == ("comment", "hello")
    kind, graph = next_event(chunks)
    assert kind == "graph" and graph["_id"] == "1"
    assert {e["data"]["id"] for e in graph["elements"]} >= {"ns-1001", "pf:ns-1001:tcp:*:8080"}
    snap = sample_snapshot()
    extra = Interface("ns-1001/if9", "ns-1001", "dummy0", 9, "dummy", "up", 1500, None)
    src.replace(replace(snap, interfaces=snap.interfaces + (extra,)))
    kind, delta = next_event(chunks)
    assert kind == "delta" and delta["version"] == 2 and delta["_id"] == "2"
    assert [e["data"]["id"] for e in delta["added"]] == ["ns-1001/if9"]
    assert src.subscribers == 1
    resp.close()
    assert src.subscribers == 0


def test_keepalive_comments_flow_when_nothing_changes():
    src = StaticSource(sample_snapshot())
    resp, chunks = open_stream(app_with(src, HEARTBEAT=0.05))
    next_event(chunks), next_event(chunks)
    assert next_event(chunks) == ("comment", "keepalive")
    resp.close()


def test_streams_beyond_the_cap_are_refused_until_one_closes():
    src = StaticSource(sample_snapshot())
    app = app_with(src, MAX_STREAMS=2)
    first, _ = open_stream(app)
    second, _ = open_stream(app)
    third = app.test_client().get("/api/events", base_url=BASE)
    assert third.status_code == 503 and third.headers["Retry-After"] == "5"
    first.close()
    fourth, chunks = open_stream(app)
    assert fourth.status_code == 200 and next_event(chunks) == ("comment", "hello")
    second.close(), fourth.close()
    assert src.subscribers == 0


def test_a_closing_source_ends_the_stream():
    src = StaticSource(sample_snapshot())
    resp, chunks = open_stream(app_with(src))
    next_event(chunks), next_event(chunks)
    src.stop()
    with pytest.raises(StopIteration):
        next(chunks)
    resp.close()


@pytest.mark.kernel
def test_a_kernel_change_reaches_the_stream_from_the_real_watcher(netns):
    host = netns("host")
    app = create_app({"NO_AUTH": True, "HOST": host, "HEARTBEAT": 0.2})
    runtime = app.extensions["bridgescope"]
    try:
        resp, chunks = open_stream(app)
        assert next_event(chunks) == ("comment", "hello")
        kind, graph = next_event(chunks)
        assert kind == "graph"
        host_ns = next(e for e in graph["elements"] if e["data"].get("is_host"))
        assert host_ns["data"]["label"] == host
        sh("ip", "-n", host, "link", "add", "bstbr0", "type", "bridge")
        found = None
        deadline = time.monotonic() + 20  # a bound on the loop, not a timing assertion
        while found is None and time.monotonic() < deadline:
            kind, data = next_event(chunks)
            if kind == "delta":
                found = next((e for e in data["added"] if e["data"].get("label") == "bstbr0"), None)
        assert found is not None and found["data"]["parent"] == host_ns["data"]["id"]
        assert found["data"]["kind"] == "bridge" and "position" in found
        resp.close()
    finally:
        runtime.stop()


def test_shutdown_ends_open_streams():
    src = StaticSource(sample_snapshot())
    app = app_with(src, HEARTBEAT=30)
    resp, chunks = open_stream(app)
    next_event(chunks), next_event(chunks)
    app.extensions["bridgescope"].closing.set()
    with pytest.raises(StopIteration):
        next(chunks)  # within a second, not after the 30 s heartbeat
    resp.close()
    assert src.subscribers == 0
