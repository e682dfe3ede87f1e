"""Topology sources for web UI tests that do not need the live Watcher.

`StaticSource` serves a fixed Snapshot (made by the real collector or built from the model)
through the same surface as the Watcher: snapshot, elements, version, subscribe/unsubscribe,
refresh. `publish()` pushes an event to every subscriber, so the SSE plumbing can be tested
deterministically.
"""
from __future__ import annotations

import queue
import threading

from bridgescope.collector.graph import diff_elements, to_elements
from bridgescope.collector.model import Snapshot


class StaticSource:
    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self.elements = to_elements(snapshot)
        self.version = 1
        self.refreshed: list[str | None] = []
        self._subscribers: list[queue.Queue] = []
        self._lock = threading.Lock()

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self._lock:
            q.put({"type": "graph", "version": self.version, "elements": self.elements})
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def refresh(self, ns_id: str | None = None) -> None:
        self.refreshed.append(ns_id)

    def replace(self, snapshot: Snapshot) -> dict:
        """Switch to a new snapshot and publish the delta, as the Watcher does."""
        new = to_elements(snapshot)
        delta = {"type": "delta", "version": self.version + 1, **diff_elements(self.elements, new)}
        self.snapshot, self.elements, self.version = snapshot, new, self.version + 1
        self.publish(delta)
        return delta

    def publish(self, event: dict | None) -> None:
        with self._lock:
            for q in self._subscribers:
                q.put(event)

    def stop(self) -> None:
        self.publish(None)
