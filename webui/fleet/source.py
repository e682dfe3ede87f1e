"""The dashboard's topology source in fleet mode: every agent's host, merged into one picture.

Shaped like the Watcher (snapshot, elements, version, subscribe/unsubscribe, refresh), so the
stream, the pages and the tests use it the same way. One AgentClient thread per agent feeds
it; each event from an agent becomes at most one merged delta (with the merged picture's own
version, one more each time), touching only that host's elements unless the grid had to move
others. Besides graphs and deltas its streams carry "fleet" events (each host's state, for the
host list) and one merged "doctor" event (the agents' findings summed): the agents run the
doctor on their own hosts, so this source is also its own doctor worker (see
verdicts.for_source).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from bridgescope.collector.live.fanout import GraphFanout
from bridgescope.collector.model import Snapshot
from bridgescope.webui.fleet import merge
from bridgescope.webui.fleet.client import AgentClient, Endpoint
from bridgescope.webui.fleet.merge import FleetHost

QUEUE_LIMIT = 1000  # events a slow tab may lag behind before it is started over with a graph


@dataclass(frozen=True)
class Agent:
    """An agent to follow; `name` is a first guess until its /v1/info says."""
    url: str
    name: str | None = None


@dataclass(frozen=True)
class FleetPlan:
    """What `serve --agent ... / --kubernetes-agents` asked for."""
    agents: tuple[str, ...]  # base URLs
    token: str
    ca_file: str | None = None
    kubernetes: tuple[str, str] | None = None  # (namespace, headless service) to discover agents from
    server_name: str | None = None  # the name in the agents' certificate (client.Endpoint)
    api: Any = None  # discovery.ApiAccess the command line found (else the pod's, on start)


def start(plan: FleetPlan) -> FleetSource:
    """A FleetSource following the plan's agents (and, in a cluster, whichever come and go)."""
    source = FleetSource(plan.token, plan.ca_file, server_name=plan.server_name)
    source.set_agents(Agent(url) for url in plan.agents)
    if plan.kubernetes is not None:
        from bridgescope.webui.fleet import discovery

        namespace, service = plan.kubernetes
        fixed = [Agent(url) for url in plan.agents]
        source.follower = discovery.follow(
            service, namespace, lambda found: source.set_agents(fixed + [Agent(a.url, a.name) for a in found]),
            api=plan.api)
    return source


class FleetSource:
    fleet = True  # no local host: app and verdicts look for this
    follower = None  # discovery's, when agents are found in Kubernetes

    def __init__(self, token: str, ca_file: str | None = None, *, server_name: str | None = None,
                 fold_at: int = merge.FOLD_AT, client: Callable[..., AgentClient] = AgentClient):
        self.token, self.ca_file, self.fold_at = token, ca_file, fold_at
        self.server_name = server_name
        self._client = client
        self.snapshot = Snapshot()  # no local host: pages that read one find it empty
        self._lock = threading.RLock()  # agents' threads and request threads all come through here
        self._clients: dict[str, AgentClient] = {}  # by URL
        self._names: dict[str, str] = {}  # URL -> the host's name in the picture
        self._heard: dict[str, float] = {}  # URL -> when the agent last said anything
        self._views: dict[str, FleetHost] = {}
        self._doctor: dict[str, dict] = {}
        self._opened: set[str] = set()
        self._layout: merge.Layout | None = None
        self._parts: dict[str, list[dict]] = {}
        self._sizes: dict[str, tuple] = {}  # host -> ((elements, folded), size)
        self._made: dict[str, tuple] = {}  # host -> the (view, origin, folded) its part was made of
        self._elements: list[dict] = []
        self._version = 0
        self._fanout = GraphFanout(QUEUE_LIMIT)
        self._doctor_subscribers: set[queue.Queue] = set()

    # ---- the TopologySource protocol ------------------------------------------------------

    @property
    def elements(self) -> list[dict]:
        return self._elements

    @property
    def version(self) -> int:
        return self._version

    def subscribe(self) -> queue.Queue:
        with self._lock:
            q = self._fanout.subscribe(self._version, self._elements)
            q.put_nowait(self._fleet_event())
            return q

    def unsubscribe(self, q: queue.Queue) -> None:
        self._fanout.unsubscribe(q)

    def refresh(self, ns_id: str | None = None) -> None:
        """The agents watch their own hosts: nothing to re-read here."""

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.stop()
        self._fanout.close()

    # ---- its own doctor worker (verdicts.for_source hands this out) -------------------------

    def attach(self, q: queue.Queue) -> None:
        with self._lock:
            self._doctor_subscribers.add(q)
            q.put_nowait(self._doctor_event())

    def detach(self, q: queue.Queue) -> None:
        with self._lock:
            self._doctor_subscribers.discard(q)

    def latest(self, wait: float = 0.0) -> None:
        """No local verdicts: each agent's panel rows stay on its own host."""
        return None

    # ---- agents -----------------------------------------------------------------------------

    def set_agents(self, agents: Iterable[Agent]) -> None:
        """Follow exactly these agents (the command line's, or discovery's latest list)."""
        wanted = {a.url: a for a in agents}
        with self._lock:
            gone = [u for u in self._clients if u not in wanted]
            stopping = [self._clients.pop(u) for u in gone]
            fresh = []
            for url in gone:
                name = self._names.pop(url, None)
                self._views.pop(name, None)
                self._doctor.pop(name, None)
            for url, agent in wanted.items():
                if url in self._clients:
                    continue
                name = self._unique(agent.name or Endpoint(url, "").netloc, url)
                self._names[url] = name
                self._views[name] = FleetHost(name)
                self._clients[url] = client = self._client(
                    Endpoint(url, self.token, self.ca_file, self.server_name),
                    on_event=lambda kind, payload, u=url: self._on_event(u, kind, payload),
                    on_state=lambda state, error, u=url: self._on_state(u, state, error))
                fresh.append(client)
            self._changed()
        for c in stopping:
            threading.Thread(target=c.stop, daemon=True).start()  # never wait on a dead agent here
        for c in fresh:
            c.start()

    def endpoint(self, host: str) -> Endpoint | None:
        """Where the agent of a host (by its name in the picture) answers."""
        with self._lock:
            url = next((u for u, n in self._names.items() if n == host), None)
            return Endpoint(url, self.token, self.ca_file, self.server_name) if url else None

    def hosts(self) -> list[dict]:
        with self._lock:
            return self._fleet_event()["hosts"]

    def open_host(self, host: str) -> bool:
        """Unfold a folded host for every view; False if no such host."""
        with self._lock:
            if host not in self._views:
                return False
            self._opened.add(host)
            self._changed()
            return True

    # ---- what agents say (their threads) ---------------------------------------------------

    def _on_event(self, url: str, kind: str, payload: dict) -> None:
        with self._lock:
            name = self._names.get(url)
            if name is None:
                return  # an agent dropped while its last event was on the way
            self._heard[url] = time.time()
            if kind == "info":
                self._rename(url, str(payload.get("name") or name))
                return
            view = self._views[name]
            if kind == "graph":
                view = replace(view, elements=tuple(payload.get("elements") or ()))
            elif kind == "delta":
                view = replace(view, elements=merge.apply_delta(view.elements, payload))
            elif kind == "doctor":
                self._doctor[name] = payload
                view = replace(view, counts=dict(payload.get("counts") or {}))
            else:
                return
            self._views[name] = replace(view, state="live", stale_since=None, error=None)
            self._changed()
            if kind == "doctor":
                self._publish_doctor()

    def _on_state(self, url: str, state: str, error: str | None) -> None:
        with self._lock:
            name = self._names.get(url)
            if name is None:
                return
            view = self._views[name]
            if state == "live":
                if view.state == "live":
                    return
                view = replace(view, state="live", stale_since=None, error=None)
            else:
                since = view.stale_since or self._heard.get(url) or time.time()
                view = replace(view, state=state, stale_since=since, error=error)
            self._views[name] = view
            self._changed()

    def _rename(self, url: str, wanted: str) -> None:
        old = self._names[url]
        if not merge.valid_name(wanted) or wanted == old:
            return
        new = self._unique(wanted, url)
        self._names[url] = new
        self._views[new] = replace(self._views.pop(old), name=new)
        if old in self._doctor:
            self._doctor[new] = self._doctor.pop(old)
        self._changed()

    def _unique(self, wanted: str, url: str) -> str:
        """Two agents that call themselves the same keep apart as name, name@host:port."""
        wanted = wanted if merge.valid_name(wanted) else Endpoint(url, "").netloc.replace("/", "_")
        taken = {n for u, n in self._names.items() if u != url}
        return wanted if wanted not in taken else f"{wanted}@{Endpoint(url, '').netloc}"

    # ---- the merged picture ----------------------------------------------------------------

    def _changed(self) -> None:
        """Merge again what changed and send the difference (under the lock)."""
        lay = merge.layout(self._views, self._layout, self._opened, self.fold_at, self._size)
        parts = {}
        for name, view in sorted(self._views.items()):
            made = (view, lay.origins[name], name in lay.folded)
            old = self._made.get(name)
            if old is not None and old[0] is view and old[1:] == made[1:] and name in self._parts:
                parts[name] = self._parts[name]  # the same object: the delta skips it unread
            else:
                parts[name] = merge.host_elements(*made)
                self._made[name] = made
        for name in set(self._made) - set(parts):
            del self._made[name]
        delta = merge.merged_delta(self._parts, parts)
        self._layout, self._parts = lay, parts
        self._elements = merge.flatten(parts)
        if delta["added"] or delta["changed"] or delta["removed"]:
            self._version += 1
            self._fanout.publish({"type": "delta", "version": self._version, **delta}, self._elements)
        self._fanout.publish(self._fleet_event(), self._elements)

    def _size(self, view: FleetHost, folded: bool) -> tuple[float, float]:
        """merge.size_of, remembered per host while its elements stay the same object."""
        key = (view.elements, folded)
        hit = self._sizes.get(view.name)
        if hit is None or hit[0][0] is not key[0] or hit[0][1] != folded:
            hit = self._sizes[view.name] = (key, merge.size_of(view, folded))
        return hit[1]

    def _fleet_event(self) -> dict:
        hosts = [{"name": v.name, "state": v.state, "status": merge.state_text(v), "stale_since": v.stale_since,
                  "error": v.error, "counts": dict(v.counts), "containers": merge.containers_of(v.elements),
                  "box": merge.host_box_id(v.name), "folded": v.name in (self._layout.folded if self._layout else ())}
                 for v in sorted(self._views.values(), key=lambda v: v.name)]
        return {"type": "fleet", "version": self._version, "hosts": hosts}

    def _doctor_event(self) -> dict:
        return merge.merge_doctor(self._doctor)

    def _publish_doctor(self) -> None:
        event = self._doctor_event()
        for q in list(self._doctor_subscribers):
            try:
                q.put_nowait(event)
            except queue.Full:
                pass
