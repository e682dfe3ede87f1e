"""A live topology of one lab only, shaped like the Watcher (snapshot/elements/version,
subscribe/unsubscribe/refresh), so the dashboard's graph script and SSE format serve it.

The walk page must show the walk lab growing, not the hundreds of unrelated namespaces a
busy machine may hold: this source scans only namespaces whose name starts with the lab's
prefix, re-reads right after each walk action (refresh) and every `interval` seconds, and
sends a delta when anything changed.
"""
from __future__ import annotations

import queue
import threading

from bridgescope.collector.errors import BridgescopeError, NamespaceNotFound
from bridgescope.collector.live.fanout import GraphFanout
from bridgescope.collector.model import Snapshot
from bridgescope.collector.render.graph import diff_elements, to_elements

QUEUE_LIMIT = 64


class LabSource:
    def __init__(self, host: str, prefix: str, *, interval: float = 2.0):
        self.host, self.prefix, self.interval = host, prefix, interval
        self.snapshot = Snapshot()
        self.elements: list[dict] = []
        self.version = 0
        self._lock = threading.RLock()
        # one scan-and-publish at a time: a slow scan finishing after a newer one would
        # otherwise publish the older picture last
        self._scan = threading.Lock()
        self._fanout = GraphFanout(QUEUE_LIMIT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LabSource:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="bridgescope-labsource", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._fanout.close()

    def subscribe(self) -> queue.Queue:
        with self._lock:
            return self._fanout.subscribe(self.version, self.elements)

    def unsubscribe(self, q: queue.Queue) -> None:
        self._fanout.unsubscribe(q)

    def refresh(self, ns_id: str | None = None) -> None:
        with self._scan:
            snap = self._read()
            if snap is not None:
                self._publish(snap)

    def _read(self) -> Snapshot | None:
        from bridgescope.plumbing.lab.probe import lab_snapshot  # webui may use plumbing
        try:
            return lab_snapshot(self.host, self.prefix)
        except NamespaceNotFound:
            return Snapshot()  # the lab is down: an empty picture
        except (BridgescopeError, OSError):
            return None  # a namespace went away mid-scan: keep the picture, rescan soon

    def _publish(self, snap: Snapshot) -> None:
        with self._lock:
            old, new = self.elements, to_elements(snap)
            self.snapshot, self.elements = snap, new
            delta = diff_elements(old, new)
            if not (delta["added"] or delta["removed"] or delta["changed"]):
                return
            self.version += 1
            self._fanout.publish({"type": "delta", "version": self.version, **delta}, self.elements)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:
                continue
