"""Carrying out one plumbing change for a web request: one at a time, audited, then re-read.

The forms and the JSON API both end here. A dry run only asks the plumbing for the commands
it would run; a real change holds the change lock (two tabs must not build the same thing at
once), is written to the audit log whatever its outcome, and makes the Watcher re-read the
kernel so every open tab sees the result the kernel reports, never a picture the UI made up.
"""
from __future__ import annotations

import threading
from typing import Any

from flask import request

from bridgescope.collector.errors import BridgescopeError
from bridgescope.plumbing.errors import ValidationError
from bridgescope.webui.app import runtime
from bridgescope.webui.audit import scrub

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


def refused(action: str, args: dict[str, Any], reason: str) -> None:
    """Audit a submitted change that was refused because of a bad field (not a preview:
    previews while typing ask for nothing). Rate-limited per client by the audit log."""
    info = {"method": request.method, "path": request.path, "action": action,
            "args": scrub((_brief(k, 40), _brief(v)) for k, v in list(args.items())[:20])}
    runtime().audit.refused(request.remote_addr or "?", info, _brief(reason, 500),
                            kind="invalid field")


def perform(action: str, args: dict[str, Any], *, dry_run: bool, client: str | None = None):
    """Run `action` with keyword `args` against the dashboard's host; returns plumbing's Result.
    `client` names who asked in the audit log (default: the request's address).

    Raises the plumbing's ValidationError / PlumbingError (both BridgescopeError) unchanged.
    """
    rt = runtime()
    fn = _plumbing(action)
    common = {"host": rt.settings.host, "firewall": rt.settings.firewall}
    if dry_run:
        return fn(**args, **common, dry_run=True)
    client = client or request.remote_addr or "?"
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
        if result.recovery:  # an interrupted earlier change, rolled back or completed first
            rt.audit.record(client, {**_request_info(action, args), "action": "recover"},
                            result.recovery.commands, f"ok: {result.recovery.summary}")
        rt.audit.record(client, _request_info(action, args), result.commands,
                        f"ok: {result.summary}")
    # Re-read in the background: the answer need not wait for a full rescan, and the new
    # picture reaches every tab (this one included) through the event stream.
    threading.Thread(target=rt.source.refresh, args=(None,), name="bridgescope-refresh",
                     daemon=True).start()
    return result
