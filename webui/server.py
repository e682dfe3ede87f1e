"""The production server: gunicorn, one gthread worker, many threads, embedded.

One process on purpose: the live topology (the Watcher's netlink sockets and firewall
monitors) and the fan-out to every open tab live in its memory. Each open tab holds one
thread for its event stream, so threads must exceed the streams we accept (Settings.max_streams).
The app, and with it the Watcher, is built in `load()`, which gunicorn calls inside the worker
after forking (no preload), so no thread or socket is lost to a fork.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
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
            "graceful_timeout": 30,  # streams end within a second of SIGTERM (see below)
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "bridgescope",
            "when_ready": (lambda _server: when_ready()) if when_ready else (lambda _server: None),
            "worker_exit": lambda _server, worker: _stop(worker),
            "on_starting": lambda _server: _adopt_orphans(),
            "on_exit": lambda _server: _end_descendants(),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        app = create_app(self.app_config)
        rt = runtime(app)
        rt.source  # start the Watcher now, in the serving process
        _end_streams_on_shutdown(rt)
        return app


def _end_streams_on_shutdown(rt) -> None:
    """Open event streams never finish by themselves; on SIGTERM/SIGINT/SIGQUIT end them first,
    so the worker exits within a second and worker_exit stops the Watcher (and its monitors)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            rt.closing.set()
            if callable(previous):
                previous(signum, frame)
        signal.signal(sig, handler)


PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Make the arbiter the subreaper of everything the worker starts (the Watcher's firewall
    monitors), so a worker killed before it could stop them leaves no orphan behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me:
                out.append(int(entry))
    return out


def _end_descendants() -> None:
    """On exit, end the processes the worker left to us (our own descendants, by pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _children()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            pids = _children()
            time.sleep(0.05)


def _stop(worker) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None and "bridgescope" in getattr(app, "extensions", {}):
        runtime(app).stop()


def serve(app_config: dict[str, Any], *, threads: int = MIN_THREADS,
          when_ready: Callable[[], None] | None = None) -> None:
    DashboardServer(app_config, bind=app_config.get("LISTEN", "127.0.0.1:8470"), threads=threads,
                    when_ready=when_ready).run()
