"""The Flask app factory: settings, the live topology source, the audit log, the blueprints.

`create_app()` touches no kernel object: the Watcher (the live topology) starts on
first use, so it always starts inside the process that serves (never before a server forks,
which would kill its threads and netlink sockets).
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flask import Flask

import bridgescope.static
import bridgescope.templates
from bridgescope.webui import auth, bodies
from bridgescope.webui.audit import AuditLog

# Every blueprint of the dashboard, as "module:attribute". Add yours with one line.
BLUEPRINTS = [
    "bridgescope.webui.pages:bp",
    "bridgescope.webui.api:bp",
    "bridgescope.webui.stream:bp",
    "bridgescope.webui.forms:bp",
    "bridgescope.webui.details:bp",
    "bridgescope.webui.tables:bp",
    "bridgescope.webui.workshop:bp",
    "bridgescope.webui.fleet.routes:bp",
]


class TopologySource(Protocol):
    """What the dashboard needs from the Watcher (tests may hand in anything shaped like it)."""
    snapshot: Any
    elements: list
    version: int

    def subscribe(self): ...
    def unsubscribe(self, q) -> None: ...
    def refresh(self, ns_id: str | None = None) -> None: ...


def settle_heap() -> None:
    """Once the first picture is read. What the process holds then (the app, the picture) is
    kept for its life or freed by reference counting (plain records form no cycles), so the
    cyclic collector need not walk it again: at a thousand namespaces a full collection over
    it held the interpreter for tens of milliseconds, and a kernel change arriving meanwhile
    waited (the live path's slowest deltas)."""
    import gc

    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Settings:
    host: str | None = None  # netns treated as "the host" (None: the one we run in)
    read_only: bool = False
    token: str | None = None  # None only with no_auth
    no_auth: bool = False
    listen: str = "127.0.0.1:8470"
    allowed_hosts: tuple[str, ...] = ()
    audit_log: str | None = None
    firewall: str = "auto"
    heartbeat: float = 15.0  # seconds between SSE keepalive comments
    max_streams: int = 48  # below the server's threads, so pages stay served when tabs pile up
    fleet: Any = None  # a fleet.source.FleetPlan: the agents' hosts, merged, instead of a local host

    @classmethod
    def from_config(cls, config: dict) -> Settings:
        names = {f.upper(): f for f in cls.__dataclass_fields__}
        return cls(**{names[k]: v for k, v in config.items() if k in names})


@dataclass
class Runtime:
    """Per-app mutable state: the one topology source, the audit log, the change lock."""
    settings: Settings
    audit: AuditLog
    source_override: TopologySource | None = None
    change_lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)  # ends every open stream
    _source: TopologySource | None = None
    _source_lock: threading.Lock = field(default_factory=threading.Lock)
    _streams: threading.BoundedSemaphore | None = None

    def __post_init__(self) -> None:
        self._source = self.source_override
        self._streams = threading.BoundedSemaphore(self.settings.max_streams)

    @property
    def source(self) -> TopologySource:
        with self._source_lock:
            if self._source is None and self.settings.fleet is not None:
                from bridgescope.webui.fleet.source import start

                self._source = start(self.settings.fleet)
            if self._source is None:
                from bridgescope.collector.live.watcher import Watcher

                watcher = Watcher(self.settings.host)
                watcher.start()
                settle_heap()
                self._source = watcher
            return self._source

    def start(self) -> None:
        """Start the topology source now rather than on first use."""
        _ = self.source

    def stop(self) -> None:
        self.closing.set()
        with self._source_lock:
            if self._source is not None and self._source is not self.source_override:
                self._source.stop()
            self._source = None

    def try_open_stream(self) -> bool:
        return self._streams.acquire(blocking=False)

    def close_stream(self) -> None:
        self._streams.release()


def runtime(app: Flask | None = None) -> Runtime:
    from flask import current_app

    return (app or current_app).extensions["bridgescope"]


def _settings(config: dict) -> Settings:
    s = Settings.from_config(config)
    if s.token is None and not s.no_auth:
        s = Settings(**{**s.__dict__, "token": auth.new_token()})
    return s


def create_app(config: dict | None = None) -> Flask:
    """config keys: HOST, READ_ONLY, TOKEN, NO_AUTH, LISTEN, ALLOWED_HOSTS, AUDIT_LOG,
    FIREWALL, HEARTBEAT, MAX_STREAMS, FLEET (a FleetPlan), and SOURCE (a ready topology source, for tests)."""
    config = dict(config or {})
    settings = _settings(config)
    here = Path(__file__).resolve().parent
    # Explicit paths: the package-dir mapping hides "bridgescope" from Flask's own lookup.
    app = Flask(
        "bridgescope.webui", root_path=str(here), instance_path=str(here / "instance"),
        template_folder=str(Path(bridgescope.templates.__file__).parent),
        static_folder=str(Path(bridgescope.static.__file__).parent),
    )
    fleet = settings.fleet is not None or getattr(config.get("SOURCE"), "fleet", False)
    app.config.update(READ_ONLY=settings.read_only, TESTING=bool(config.get("TESTING")), FLEET=fleet)
    listen_host, listen_port = auth.parse_listen(settings.listen)
    auth.install(app, auth.AccessPolicy(
        token=settings.token, csrf=auth.new_token(), listen_host=listen_host,
        listen_port=listen_port, extra_hosts=frozenset(h.lower() for h in settings.allowed_hosts)))
    bodies.install(app)
    audit = AuditLog(Path(settings.audit_log) if settings.audit_log else None)
    app.extensions["bridgescope"] = Runtime(settings, audit, source_override=config.get("SOURCE"))
    for spec in BLUEPRINTS:
        module, _, attr = spec.partition(":")
        app.register_blueprint(getattr(importlib.import_module(module), attr))

    app.jinja_env.globals.update(read_only=settings.read_only, host_netns=settings.host, fleet=fleet)

    return app
