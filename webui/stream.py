"""GET /api/events: one Server-Sent Events stream per tab.

The Watcher hands every new subscriber the whole graph first, then deltas; each event carries
the topology version as its SSE id, so a browser that reconnects gets a fresh full graph and
resynchronises; pages read it with fetch(), since EventSource cannot send the session header.
A comment line every `heartbeat` seconds keeps proxies from timing out and makes a vanished
client surface as a failed write, which closes the response and unsubscribes it; a stream
whose session has expired ends there too.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, jsonify

from bridgescope.webui import auth, verdicts
from bridgescope.webui.app import runtime

bp = Blueprint("stream", __name__)

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def format_event(event: dict) -> str:
    """One SSE message: `id` = topology version, `event` = graph|delta|..., `data` = JSON."""
    data = json.dumps(event, separators=(",", ":"), default=str)
    head = f"id: {event['version']}\n" if "version" in event else ""
    return f"{head}event: {event.get('type', 'message')}\ndata: {data}\n\n"


class EncodedEvents:
    """The Watcher puts the same event object in every subscriber's queue: encode it once, not
    once per open tab (50 tabs x a 500-namespace graph would otherwise hold the GIL for long)."""

    def __init__(self, keep: int = 64):
        self._keep = keep
        self._cache: dict[tuple, tuple[dict, str]] = {}
        self._lock = threading.Lock()

    def text(self, event: dict) -> str:
        key = (id(event), event.get("type"), event.get("version"))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is event:
                return hit[1]
        text = format_event(event)
        with self._lock:
            if len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (event, text)
        return text


ENCODED = EncodedEvents()


def _messages(q: queue.Queue, heartbeat: float, closing: threading.Event,
              signed_in: Callable[[], bool] = lambda: True) -> Iterator[str]:
    # The first bytes go out at once so the client sees the headers (and "live") immediately.
    yield ": hello\n\n"
    quiet_since = time.monotonic()
    while not closing.is_set():  # checked at least every second: shutdown must not wait on tabs
        try:
            event = q.get(timeout=min(heartbeat, 1.0))
        except queue.Empty:
            if time.monotonic() - quiet_since >= heartbeat:
                if not signed_in():  # the session expired or was dropped: so does its view
                    return
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"
            continue
        if event is None or not signed_in():  # shutting down, or the session is gone: no more data
            return
        quiet_since = time.monotonic()
        yield ENCODED.text(event)


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = []

    def run() -> None:
        if not done:
            done.append(True)
            fn()
    return run


@bp.get("/api/events")
def events() -> Response:
    return open_stream(lambda: runtime().source)


def open_stream(get_source: Callable[[], object]) -> Response:
    """One SSE response over a live source (the Watcher, or the walk lab's): the whole graph,
    then deltas; holds one of the server's stream slots until the client goes."""
    rt = runtime()
    if not rt.try_open_stream():
        resp = jsonify({"error": "too many open live views; close a tab and reload"})
        resp.status_code = 503
        resp.headers["Retry-After"] = "5"
        return resp
    try:
        source = get_source()
        q = source.subscribe()
        checks = verdicts.for_source(source)  # its "doctor" events join this stream
        checks.attach(q)
    except BaseException:
        rt.close_stream()
        raise

    def cleanup() -> None:
        checks.detach(q)
        source.unsubscribe(q)
        rt.close_stream()

    messages = _messages(q, rt.settings.heartbeat, rt.closing, auth.session_keeper())
    resp = Response(messages, mimetype="text/event-stream", headers=SSE_HEADERS)
    # call_on_close runs even when the generator never started (a client that left at once).
    resp.call_on_close(_once(cleanup))
    return resp
