"""The production server: gunicorn, one gthread worker, many threads, embedded.

One process on purpose: the live topology (the Watcher's netlink sockets and firewall
monitors) and the fan-out to every open tab live in its memory. Each open tab holds one
thread for its event stream, so threads must exceed the streams we accept (Settings.max_streams).
The app, and with it the Watcher, is built in `load()`, which gunicorn calls inside the worker
after forking (no preload), so no thread or socket is lost to a fork.
"""
from __future__ import annotations

from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from bridgescope.webui.app import create_app, runtime

MIN_THREADS = 64


class DashboardServer(BaseApplication):
    def __init__(self, app_config: dict[str, Any], *, bind: str, threads: int = MIN_THREADS,
                 when_ready: Callable[[], None] | None = None):
        self.app_config = dict(app_config)
        self.options = {
            "bind": bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": max(threads, MIN_THREADS),
            "preload_app": False,
            "timeout": 60,  # worker heartbeat, not a request limit: streams stay open
            "graceful_timeout": 3,  # open event streams never finish by themselves
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "bridgescope",
            "when_ready": (lambda _server: when_ready()) if when_ready else (lambda _server: None),
            "worker_exit": lambda _server, worker: _stop(worker),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        app = create_app(self.app_config)
        runtime(app).source  # start the Watcher now, in the serving process
        return app


def _stop(worker) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None and "bridgescope" in getattr(app, "extensions", {}):
        runtime(app).stop()


def serve(app_config: dict[str, Any], *, threads: int = MIN_THREADS,
          when_ready: Callable[[], None] | None = None) -> None:
    DashboardServer(app_config, bind=app_config.get("LISTEN", "127.0.0.1:8470"), threads=threads,
                    when_ready=when_ready).run()
