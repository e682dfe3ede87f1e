"""Carrying out one plumbing change for a web request: one at a time, audited, then re-read.

The forms and the JSON API both end here. A dry run only asks the plumbing for the commands
it would run; a real change holds the change lock (two tabs must not build the same thing at
once), is written to the audit log whatever its outcome, and makes the Watcher re-read the
kernel so every open tab sees the result the kernel reports, never a picture the UI made up.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, request

from bridgescope.collector.errors import BridgescopeError
from bridgescope.plumbing.errors import ValidationError
from bridgescope.webui.app import runtime
from bridgescope.webui.audit import scrub

# A change request is a handful of short fields; anything larger is refused (413) unread.
MAX_BODY = 64 * 1024

# Web action name -> bridgescope.plumbing.api function (all-or-nothing on the plumbing side).
ACTIONS = ("create_network", "remove_network", "create_container", "remove_container",
           "add_forward", "remove_forward")


def _plumbing(action: str):
    from bridgescope.plumbing import api

    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return getattr(api, action)


def _request_info(action: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"method": request.method, "path": request.path, "action": action,
            "args": scrub((k, v) for k, v in args.items())}


def _brief(value: Any, limit: int = 200) -> str:
    """A refused request's field as the audit log keeps it: text, cut short (refusals are
    exactly where a client sends megabytes of garbage)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class RefusalBudget:
    """How many refusals per client the audit log takes per window; the rest are counted and
    the count is written with the client's next logged refusal. A client posting garbage in a
    loop must not fill the disk, and the operator still learns that it happened."""
    per_window: int = 10
    window: float = 60.0
    max_clients: int = 1024
    _clients: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # start, logged, suppressed
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, client: str, now: float) -> tuple[bool, int]:
        """(log this refusal?, refusals suppressed since the last logged one)."""
        with self._lock:
            if client not in self._clients and len(self._clients) >= self.max_clients:
                self._clients = {c: v for c, v in self._clients.items() if now - v[0] < self.window}
            start, logged, suppressed = self._clients.get(client, (now, 0, 0))
            if now - start >= self.window:
                start, logged = now, 0
            if logged < self.per_window:
                self._clients[client] = (start, logged + 1, 0)
                return True, suppressed
            self._clients[client] = (start, logged, suppressed + 1)
            return False, 0


def refused(action: str, args: dict[str, Any], reason: str) -> None:
    """Audit a submitted change that was refused because of a bad field (not a preview:
    previews while typing ask for nothing). Rate-limited per client by RefusalBudget."""
    budget = current_app.extensions.setdefault("bridgescope_refusals", RefusalBudget())
    client = request.remote_addr or "?"
    log, suppressed = budget.admit(client, time.monotonic())
    if not log:
        return
    info = {"method": request.method, "path": request.path, "action": action,
            "args": scrub((_brief(k, 40), _brief(v)) for k, v in list(args.items())[:20])}
    more = f" (+{suppressed} earlier refusals from {client} not logged)" if suppressed else ""
    runtime().audit.record(client, info, (), f"refused: {_brief(reason, 500)}{more}", ok=False)


def limit_body(state) -> None:
    """record_once hook of the blueprints that take changes: bound what any request may
    upload. App-wide, because the CSRF check reads the form before a blueprint's own hooks run."""
    if state.app.config.get("MAX_CONTENT_LENGTH") is None:  # Flask's default: unlimited
        state.app.config["MAX_CONTENT_LENGTH"] = MAX_BODY


def perform(action: str, args: dict[str, Any], *, dry_run: bool):
    """Run `action` with keyword `args` against the dashboard's host; returns plumbing's Result.

    Raises the plumbing's ValidationError / PlumbingError (both BridgescopeError) unchanged.
    """
    rt = runtime()
    fn = _plumbing(action)
    common = {"host": rt.settings.host, "firewall": rt.settings.firewall}
    if dry_run:
        return fn(**args, **common, dry_run=True)
    client = request.remote_addr or "?"
    with rt.change_lock:
        try:
            result = fn(**args, **common, dry_run=False)
        except ValidationError as err:
            refused(action, args, str(err))
            raise
        except BridgescopeError as err:
            rt.audit.record(client, _request_info(action, args), getattr(err, "commands", ()),
                            f"error: {err}", ok=False)
            raise
        rt.audit.record(client, _request_info(action, args), result.commands,
                        f"ok: {result.summary}")
    # Re-read in the background: the answer need not wait for a full rescan, and the new
    # picture reaches every tab (this one included) through the event stream.
    threading.Thread(target=rt.source.refresh, args=(None,), name="bridgescope-refresh",
                     daemon=True).start()
    return result
