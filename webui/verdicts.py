"""The doctor and the reachability verdicts, kept current off the delta path.

One worker thread per live source (the dashboard's Watcher, the walk lab's source). It never
sits in the way of a delta: it notices that the source's snapshot changed (a cheap identity
check every 100 ms), waits for the changes to settle (at most one run per BATCH seconds),
then runs `diagnose` and the verdicts and puts one small "doctor" event into every open
stream of that source. No netlink event announces a new listening socket, so the sockets of
the namespaces forwards point at are also read every LISTEN_POLL seconds, and a change there
is a change too. The event carries the read's time so pages can show the check's age.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridgescope.collector.doctor import ForwardTarget, diagnose
from bridgescope.collector.doctor.finding import Finding, counts_of
from bridgescope.collector.kernel.listeners import ListenerRead, read_namespaces
from bridgescope.collector.model import PortForward, Snapshot
from bridgescope.collector.rules.reach import ForwardReach, Verdict, namespaces_to_poll, reach

log = logging.getLogger(__name__)

TICK, BATCH, LISTEN_POLL = 0.1, 0.3, 2.0


@dataclass(frozen=True)
class Checkup:
    snapshot: Snapshot
    findings: tuple[Finding, ...]
    reach: tuple[ForwardReach, ...]
    listeners: ListenerRead | None


def event_of(result: Checkup) -> dict:
    """The stream's "doctor" event: counts by severity, findings' object ids, verdicts."""
    counts = counts_of(result.findings)
    return {"type": "doctor", "counts": counts,
            "findings": [{"id": f.id, "severity": f.severity, "objects": list(f.objects), "title": f.title}
                         for f in result.findings],
            "verdicts": {fr.id: {v.source: {"outcome": v.outcome, "reason": v.reason} for v in fr.verdicts}
                         for fr in result.reach},
            "checked_at": result.listeners.read_at if result.listeners else None}


class Verdicts:
    """The worker of one source. `owned`: bridgescope's owned object tags (orphan-rule)."""

    def __init__(self, source, owned: Callable[[], frozenset[str] | None] = lambda: None,
                 forwards: Callable[[], tuple[ForwardTarget, ...] | None] = lambda: None):
        self.source = source
        self.owned = owned
        self.forwards = forwards  # bridgescope's own (forward-target-gone, port-taken)
        self._queues: set[queue.Queue] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._latest: Checkup | None = None
        self._event: dict | None = None
        self._thread = threading.Thread(target=self._run, name="bridgescope-verdicts", daemon=True)
        self._thread.start()

    # -- readers -----------------------------------------------------------------------

    def latest(self, wait: float = 2.0) -> Checkup | None:
        """The newest result; waits for the first one up to `wait` seconds."""
        deadline = time.monotonic() + wait
        while self._latest is None and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.02)
        return self._latest

    def attach(self, q: queue.Queue) -> None:
        with self._lock:
            self._queues.add(q)
            if self._event is not None:
                q.put_nowait(self._event)

    def detach(self, q: queue.Queue) -> None:
        with self._lock:
            self._queues.discard(q)

    def poke(self) -> None:
        """Look again now (a change made here: a new listener, say)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the worker --------------------------------------------------------------------

    def _run(self) -> None:
        seen: Snapshot | None = None
        listeners: ListenerRead | None = None
        last_run = next_listen = 0.0
        while not self._stop.is_set():
            poked = self._wake.wait(TICK)
            self._wake.clear()
            try:
                snap = self.source.snapshot
                now = time.monotonic()
                if snap is seen and now < next_listen and not poked:
                    continue
                if now - last_run < BATCH:  # batch a burst of changes into one run
                    time.sleep(BATCH - (now - last_run))
                    snap = self.source.snapshot
                fresh = verdict_listeners(snap)
                next_listen = time.monotonic() + LISTEN_POLL
                if snap is seen and listeners is not None and fresh.by_ns == listeners.by_ns:
                    listeners = fresh
                    continue
                seen, listeners, last_run = snap, fresh, time.monotonic()
                self._publish(self._compute(snap, fresh))
            except Exception:
                log.exception("verdicts: a run failed; the next change runs again")
                seen = None

    def _compute(self, snap: Snapshot, listeners: ListenerRead) -> Checkup:
        try:
            owned, forwards = self.owned(), self.forwards()
        except Exception:  # the saved state may be mid-write: these wait for the next run
            owned, forwards = None, None
        return Checkup(snap, diagnose(snap, owned, listeners, forwards), reach(snap, listeners),
                      listeners)

    def _publish(self, result: Checkup) -> None:
        event = event_of(result)
        with self._lock:
            self._latest = result
            self._event = event
            for q in list(self._queues):
                try:
                    q.put_nowait(event)
                except queue.Full:
                    pass


def verdict_listeners(snap: Snapshot) -> ListenerRead:
    """The listening sockets the verdicts need (every forward's container and the host): the
    worker and `bridgescope doctor` read the same ones, so they find the same things."""
    wanted = namespaces_to_poll(snap)
    return read_namespaces(ns for ns in snap.namespaces if ns.id in wanted)


# ---- one worker per source, per app ------------------------------------------------------

_workers: dict[int, Verdicts] = {}
_workers_lock = threading.Lock()


def worker(source, owned: Callable[[], frozenset[str] | None] = lambda: None,
           forwards: Callable[[], tuple[ForwardTarget, ...] | None] = lambda: None) -> Verdicts:
    with _workers_lock:
        found = _workers.get(id(source))
        if found is None or found.source is not source:
            found = _workers[id(source)] = Verdicts(source, owned, forwards)
        return found


def for_source(source) -> Verdicts:
    """The worker of a source of this app; the dashboard's doctor knows which tagged rules
    bridgescope owns (the walk lab's has no saved state)."""
    from bridgescope.webui.app import runtime

    if getattr(source, "fleet", False):  # the agents run the doctor on their own hosts
        return source
    rt = runtime()
    if source is not rt.source:
        return worker(source)
    host = rt.settings.host
    return worker(source, lambda: _owned(host), lambda: _forwards(host))


def _owned(host: str | None) -> frozenset[str] | None:
    from bridgescope.plumbing import api

    return api.owned_tags(host)


def _forwards(host: str | None) -> tuple[ForwardTarget, ...]:
    from bridgescope.plumbing import api

    return api.forward_targets(host)


# ---- the panels' verdict rows ------------------------------------------------------------

def verdict_text(v: Verdict) -> str:
    """A verdict in the words the panels and the tables show."""
    return "reachable" if v.ok else f"not reachable ({v.outcome}): {v.reason}"


def deaf_forwards(result: Checkup | None, ns_id: str) -> list[PortForward]:
    """The forwards into ns_id whose destination port no program there listens on."""
    return [fr.forward for fr in (result.reach if result else ()) if fr.forward.container == ns_id
            and fr.listening is False]


def verdict_rows(result: Checkup | None, element_id: str, kind: str) -> tuple[tuple[str, str], ...]:
    """A forward's panel: one row per source; a container's: its published ports nothing
    answers. Empty when the worker has not run yet."""
    from bridgescope.collector.rules.reach import SOURCE_LABELS

    if result is None:
        return ()
    age = f"{max(0.0, time.time() - result.listeners.read_at):.0f} s ago" if result.listeners else "never"
    if kind == "portforward":
        fr = next((f for f in result.reach if f.id == element_id), None)
        if fr is None:
            return ()
        rows = tuple((f"from {SOURCE_LABELS[v.source]}", verdict_text(v)) for v in fr.verdicts)
        return rows + (("listeners checked", age),)
    deaf = deaf_forwards(result, element_id)
    if not deaf:
        return ()
    ports = ", ".join(f"{pf.proto}/{pf.to_port} (host port {pf.host_port})" for pf in deaf)
    return (("published ports with no listener", ports), ("listeners checked", age))


def annotate(details, source):
    """The panel's facts with the verdicts' rows added (a forward's reachability, a
    container's ports nothing answers)."""
    from dataclasses import replace

    rows = verdict_rows(for_source(source).latest(), details.id, details.kind)
    return replace(details, facts=details.facts + rows) if rows else details
