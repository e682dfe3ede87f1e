"""Graph events to many subscribers: the whole graph first, then deltas.

A subscriber that falls behind (its queue is full) is started over with the whole graph
instead of slowing the publisher down; `None` on a queue means "the stream ends".
"""
from __future__ import annotations

import queue
import threading


def graph_event(version: int, elements: list[dict]) -> dict:
    return {"type": "graph", "version": version, "elements": elements}


class GraphFanout:
    def __init__(self, limit: int = 0):
        self._limit = limit
        self._queues: list[queue.Queue] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queues)

    def subscribe(self, version: int, elements: list[dict]) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=self._limit)
        q.put(graph_event(version, elements))
        with self._lock:
            self._queues.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._queues:
                self._queues.remove(q)

    def publish(self, event: dict, elements: list[dict]) -> None:
        """Send event to everyone; elements is the whole graph after it, for restarts."""
        with self._lock:
            queues = list(self._queues)
        for q in queues:
            try:
                q.put_nowait(event)
            except queue.Full:
                _drain(q)
                q.put_nowait(graph_event(event["version"], elements))

    def close(self) -> None:
        """End every open stream."""
        with self._lock:
            queues, self._queues = self._queues, []
        for q in queues:
            _drain(q) if q.full() else None
            q.put_nowait(None)


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
