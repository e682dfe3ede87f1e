"""The agent's HTTP API: one host's live topology and doctor, without the UI.

    GET  /v1/info       name, topology version, read-only or not, bridgescope's version
    GET  /v1/snapshot   the `snapshot --json` object, the doctor's findings and their counts
    GET  /v1/events     SSE: the whole graph, then deltas (ids = topology versions), and the
                        doctor's events; resumes after `Last-Event-ID` from the last deltas kept
    POST/DELETE /v1/forwards   a port forward, through the same plumbing call as the CLI
    GET  /metrics       Prometheus text format

Only a bearer token opens it (no cookies, no sessions: a dashboard or Prometheus is the
client, so CSRF does not apply). The same Runtime, Watcher, doctor worker and change path as
the dashboard serve it; the agent only adds the delta history that resuming needs and timing
of the Watcher's reads.
"""
from __future__ import annotations

import hmac
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from bridgescope.collector.live.watcher import Watcher
from bridgescope.webui import bodies, verdicts
from bridgescope.webui.app import Runtime, Settings, runtime, settle_heap
from bridgescope.webui.audit import AuditLog
from bridgescope.webui.fleet import metrics

bp = Blueprint("agent", __name__)

HEARTBEAT = 5.0  # seconds between keepalives: a dashboard notices a dead agent within 10 s
KEEP_DELTAS = 256  # deltas kept for clients that resume with Last-Event-ID
CATCH_UP = 2.0  # seconds a resuming client waits for the history to reach the graph it got
READ_ONLY = "this agent is read-only (start it with --allow-changes)"


def package_version() -> str:
    try:
        return metadata.version("bridgescope")
    except metadata.PackageNotFoundError:
        return "unknown"


# ---- the delta history ------------------------------------------------------------------

def missed(deltas: tuple[dict, ...], base: int, last_seen: int, current: int) -> list[dict] | None:
    """The deltas after last_seen up to current, if `deltas` (consecutive versions following
    `base`, the graph they started from) hold every one of them; None when some are gone (a
    fresh graph is due). An empty list: the client is up to date."""
    if not base <= last_seen <= current:
        return None
    wanted = [d for d in deltas if last_seen < d["version"] <= current]
    if [d["version"] for d in wanted] != list(range(last_seen + 1, current + 1)):
        return None
    return wanted


class DeltaHistory:
    """The last KEEP_DELTAS deltas the Watcher published, read from a subscription of its own."""

    def __init__(self, keep: int = KEEP_DELTAS):
        self._deltas: deque[dict] = deque(maxlen=keep)
        self._base = 0  # the version of the graph the kept deltas follow
        self._version = -1  # the newest version recorded
        self._changed = threading.Condition()

    def record(self, event: dict) -> None:
        with self._changed:
            if event.get("type") == "graph":  # a start, or the Watcher started us over
                self._deltas.clear()
                self._base = event["version"]
            elif event.get("type") == "delta":
                self._deltas.append(event)
            else:
                return
            self._version = event["version"]
            self._changed.notify_all()

    def since(self, last_seen: int, current: int, wait: float = CATCH_UP) -> list[dict] | None:
        """missed(), once the history has caught up with `current` (or None after `wait`)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version >= current, timeout=wait)
            if self._version < current:
                return None
            return missed(tuple(self._deltas), self._base, last_seen, current)

    def follow(self, source, closing: threading.Event) -> None:
        """Record every event of source until closing (run in a thread of its own)."""
        q = source.subscribe()
        try:
            while not closing.is_set():
                try:
                    event = q.get(timeout=1.0)
                except queue.Empty:
                    continue
                if event is None:
                    return
                self.record(event)
        finally:
            source.unsubscribe(q)


# ---- the runtime: the dashboard's, with a timed Watcher and the history -------------------

class TimedWatcher(Watcher):
    """The Watcher, each read timed: full reads (the first and the periodic heals) and the
    rounds that follow events."""

    def __init__(self, host: str | None, on_timing):
        super().__init__(host)
        self._on_timing = on_timing
        self._first = True

    def _round(self, **kwargs) -> None:
        began = time.perf_counter()
        super()._round(**kwargs)
        full, self._first = self._first or kwargs.get("full", False), False
        self._on_timing("collector" if full else "delta", time.perf_counter() - began)


@dataclass
class AgentRuntime(Runtime):
    name: str = ""
    history: DeltaHistory = field(default_factory=DeltaHistory)
    timings: metrics.Timings = field(default_factory=metrics.Timings)
    _timing_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def source(self):
        with self._source_lock:
            if self._source is None:
                watcher = TimedWatcher(self.settings.host, self._observe)
                watcher.start()
                settle_heap()
                self._source = watcher
                threading.Thread(target=self.history.follow, args=(watcher, self.closing),
                                 name="bridgescope-history", daemon=True).start()
            return self._source

    def _observe(self, kind: str, seconds: float) -> None:
        with self._timing_lock:
            old = self.timings
            self.timings = metrics.Timings(
                old.collector.observe(seconds) if kind == "collector" else old.collector,
                old.delta.observe(seconds) if kind == "delta" else old.delta)


def agent_runtime() -> AgentRuntime:
    return runtime()  # type: ignore[return-value]


# ---- the app ----------------------------------------------------------------------------

def create_agent_app(config: dict[str, Any]) -> Flask:
    """config keys: NAME, TOKEN (required), HOST, READ_ONLY, LISTEN, AUDIT_LOG, FIREWALL,
    MAX_STREAMS."""
    if not config.get("TOKEN"):
        raise ValueError("an agent never runs without a token")
    settings = Settings.from_config({**config, "HEARTBEAT": HEARTBEAT})
    here = Path(__file__).resolve().parent
    # Explicit paths: the package-dir mapping hides "bridgescope" from Flask's own lookup.
    app = Flask("bridgescope.webui.fleet", root_path=str(here), instance_path=str(here / "instance"))
    app.config.update(MAX_CONTENT_LENGTH=bodies.MAX_BODY)
    audit = AuditLog(Path(settings.audit_log) if settings.audit_log else None)
    app.extensions["bridgescope"] = AgentRuntime(settings, audit, name=config.get("NAME") or "")
    app.before_request(_authenticate)
    app.register_error_handler(HTTPException, _http_error)
    app.register_blueprint(bp)
    return app


def _error(status: int, message: str) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


def _http_error(err: HTTPException) -> Response:
    return _error(err.code or 500, err.description or err.name)


def _authenticate() -> Response | None:
    rt = agent_runtime()
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if given and hmac.compare_digest(given.encode(), rt.settings.token.encode()):
        return None
    reason = "wrong access token" if given else "no access token"
    rt.audit.refused(request.remote_addr or "?", {"method": request.method, "path": request.path}, reason)
    resp = _error(401, f"{reason}: send Authorization: Bearer TOKEN")
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


@bp.get("/v1/info")
def info() -> Response:
    rt = agent_runtime()
    return jsonify({"name": rt.name, "version": rt.source.version, "read_only": rt.settings.read_only,
                    "bridgescope": package_version()})


def finding_json(f) -> dict:
    return {"id": f.id, "severity": f.severity, "title": f.title, "objects": list(f.objects),
            "fix": "\n".join(f.fix) if f.fix else None}


@bp.get("/v1/snapshot")
def snapshot() -> Response:
    from bridgescope.collector.doctor.finding import counts_of
    from bridgescope.collector.render.export import to_json

    rt = agent_runtime()
    source = rt.source
    version, snap = source.version, source.snapshot
    result = verdicts.for_source(source).latest(wait=5.0)
    findings = result.findings if result else ()
    return jsonify({"name": rt.name, "version": version, "snapshot": to_json(snap),
                    "findings": [finding_json(f) for f in findings],
                    "counts": counts_of(findings)})


def last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


@bp.get("/v1/events")
def events() -> Response:
    from bridgescope.webui.stream import ENCODED, SSE_HEADERS, _messages

    rt = agent_runtime()
    if not rt.try_open_stream():
        resp = _error(503, "too many open event streams")
        resp.headers["Retry-After"] = "5"
        return resp
    try:
        source = rt.source
        q = source.subscribe()
        first = q.get_nowait()  # subscribe() put the whole graph there
        checks = verdicts.for_source(source)
        checks.attach(q)
    except BaseException:
        rt.close_stream()
        raise
    seen = last_event_id()
    resumed = None if seen is None else rt.history.since(seen, first["version"])
    opening = [first] if resumed is None else resumed

    def stream() -> Iterator[str]:
        try:
            for event in opening:
                yield ENCODED.text(event)
            yield from _messages(q, rt.settings.heartbeat, rt.closing)
        finally:
            checks.detach(q)
            source.unsubscribe(q)
            rt.close_stream()

    return Response(stream(), mimetype="text/event-stream", headers=SSE_HEADERS)


@bp.get("/metrics")
def metrics_text() -> Response:
    rt = agent_runtime()
    source = rt.source
    result = verdicts.for_source(source).latest(wait=5.0)
    body = metrics.exposition(metrics.families(
        source.snapshot, result.findings if result else (), result.reach if result else (),
        rt.timings, name=rt.name, version=package_version()))
    return Response(body, content_type=metrics.CONTENT_TYPE)


# ---- forwards ---------------------------------------------------------------------------

FORWARD_FIELDS = {"target": True, "mapping": True, "actor": False}


class BadBody(ValueError):
    pass


def forward_body(body: Any) -> tuple[str, str, str | None]:
    """(target, mapping, actor) from the request's JSON; BadBody says what is wrong."""
    if not isinstance(body, dict):
        raise BadBody('the body must be a JSON object {"target": ..., "mapping": ...}')
    unknown = sorted(set(body) - set(FORWARD_FIELDS))
    if unknown:
        raise BadBody(f"unknown field {unknown[0][:40]!r}; expected {', '.join(FORWARD_FIELDS)}")
    for name, required in FORWARD_FIELDS.items():
        value = body.get(name)
        if required and not (isinstance(value, str) and value):
            raise BadBody(f"{name} is required and must be a non-empty string")
        if not required and value is not None and not isinstance(value, str):
            raise BadBody(f"{name} must be a string")
    actor = body.get("actor")
    return body["target"], body["mapping"], actor[:200] if actor else None


def _change(action: str, ok_status: int) -> Response:
    from bridgescope.collector.errors import BridgescopeError
    from bridgescope.plumbing import validate
    from bridgescope.plumbing.errors import UnknownContainer, ValidationError
    from bridgescope.webui.changes import perform, refused

    rt = agent_runtime()
    try:
        target, mapping, actor = forward_body(bodies.json_body(request))
        validate.container_ref(target, "target")
        forwards = validate.port_spec(mapping)
    except (BadBody, bodies.BodyError, ValidationError) as err:
        refused(action, _audit_body(), str(err))
        return _error(400, str(err))
    if rt.settings.read_only:
        refused(action, _audit_body(), READ_ONLY)
        return _error(403, READ_ONLY)
    client = f"{actor} via {request.remote_addr}" if actor else None
    try:
        result = perform(action, {"container": target, "spec": mapping}, dry_run=False, client=client)
    except ValidationError as err:
        return _error(404 if isinstance(err, UnknownContainer) else 409, str(err))
    except BridgescopeError as err:
        return _error(409, str(err))
    forward = {"target": target, "mapping": mapping,
               "ports": [{"proto": f.proto, "host_ip": f.host_ip, "host_port": f.host_port,
                          "container_port": f.container_port} for f in forwards]}
    resp = jsonify({"forward": forward, "commands": list(result.commands), "summary": result.summary})
    resp.status_code = ok_status
    return resp


def _audit_body() -> dict:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


@bp.post("/v1/forwards")
def add_forward() -> Response:
    return _change("add_forward", 201)


@bp.delete("/v1/forwards")
def remove_forward() -> Response:
    return _change("remove_forward", 200)
