"""Follow adopted containers while `serve` runs: a small thread of its own, off the delta path,
re-points or removes (with an audit entry) the forwards of containers that restarted, moved
or went, and puts back the DOCKER-USER jump an engine restart lost (plumbing/adopt.py)."""
from __future__ import annotations

import logging
import threading

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui.audit import AuditLog

log = logging.getLogger(__name__)
PERIOD = 5.0  # seconds: an engine restarting a container takes about as long


def follow_once(host: str | None, audit: AuditLog) -> None:
    from bridgescope.plumbing import api

    if not api.load_state(host).adopted:
        return  # nothing adopted: nothing read
    try:
        done = api.reconcile(host=host)
    except BridgescopeError as err:
        log.warning("reconcile: %s", err)
        return
    if done.commands:
        audit.record("serve", {"action": "reconcile", "host": host}, done.commands,
                     f"ok: {done.summary}")


def start(host: str | None, audit: AuditLog) -> threading.Event:
    """Run follow_once every PERIOD seconds until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(PERIOD):
            try:
                follow_once(host, audit)
            except Exception:
                log.exception("reconcile: a run failed; the next one tries again")
    threading.Thread(target=loop, name="bridgescope-reconcile", daemon=True).start()
    return stop
