"""Tell the watcher which namespaces' firewall rules changed.

nf_tables has change events: one `nft monitor` per namespace reports every rule, chain and
table change, whether nft, iptables-nft, Docker or firewalld made it (xtables-monitor -e
stands in when nft is not installed). Its output is only a trigger: we debounce a burst
(Docker adds a dozen rules per container) and then say "namespace X changed"; the caller
re-reads that namespace. Legacy x_tables have no events (xtables-legacy(8)), so namespaces
that have legacy tables are polled: a hash of `iptables-legacy-save` without counters.

One thread does all of it: it multiplexes the monitors' pipes, fires due callbacks, polls,
and reconciles the monitor processes with the namespaces `update` asked for.
"""
from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import subprocess
import threading
import time
from typing import Callable, Mapping

from bridgescope.collector.firewall import readers

DEBOUNCE = 0.2  # seconds of quiet after the last event before re-reading
POLL = 2.0  # legacy hash polling period; also how soon a dead monitor is restarted
TICK = 0.05


def monitor_argv() -> list[str]:
    if shutil.which("nft"):
        return ["stdbuf", "-oL", "nft", "monitor"]
    return ["stdbuf", "-oL", "xtables-monitor", "-e"]


class FirewallWatch:
    """Calls on_change(ns_id) when the rules of a namespace ({ns_id: nsfs path}) changed."""

    def __init__(self, namespaces: Mapping[str, str], on_change: Callable[[str], None], *,
                 debounce: float = DEBOUNCE, poll: float = POLL):
        self._wanted = dict(namespaces)
        self._on_change = on_change
        self._debounce, self._poll = debounce, poll
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._monitors: dict[str, tuple[str, subprocess.Popen]] = {}  # ns -> (path, process)
        self._due: dict[str, float] = {}  # ns -> monotonic time to report it
        self._legacy: dict[str, str] = {}  # ns -> hash of its legacy rules ("" = none)
        self._next_poll = 0.0
        self.errors: list[str] = []  # what went wrong in callbacks or tools, newest last

    def update(self, namespaces: Mapping[str, str]) -> None:
        with self._lock:
            self._wanted = dict(namespaces)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="bridgescope-fwwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for ns_id in list(self._monitors):
            self._end_monitor(ns_id)
        self._selector.close()

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._reconcile()
            for key, _ in self._selector.select(timeout=TICK):
                self._read(key)
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + self._poll
                self._poll_legacy()
            for ns_id in [n for n, when in self._due.items() if when <= now]:
                del self._due[ns_id]
                self._fire(ns_id)

    def _reconcile(self) -> None:
        with self._lock:
            wanted = dict(self._wanted)
        for ns_id, (path, _) in list(self._monitors.items()):
            if wanted.get(ns_id) != path:
                self._end_monitor(ns_id)
        for ns_id in set(self._legacy) - set(wanted):
            del self._legacy[ns_id]
        for ns_id in set(self._due) - set(wanted):
            del self._due[ns_id]
        restart_due = time.monotonic() >= self._next_poll
        for ns_id, path in wanted.items():
            if ns_id not in self._monitors and (ns_id not in self._legacy or restart_due):
                self._start_monitor(ns_id, path)

    def _start_monitor(self, ns_id: str, path: str) -> None:
        if not os.path.exists(path):
            return
        try:
            process = subprocess.Popen(["nsenter", f"--net={path}", "--", *monitor_argv()],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL)
        except OSError as err:
            self.errors.append(f"cannot watch the firewall of {ns_id}: {err.strerror}")
            return
        os.set_blocking(process.stdout.fileno(), False)
        self._selector.register(process.stdout, selectors.EVENT_READ, ns_id)
        self._monitors[ns_id] = (path, process)
        if ns_id not in self._legacy:
            self._legacy[ns_id] = self._legacy_hash(path)

    def _end_monitor(self, ns_id: str) -> None:
        _, process = self._monitors.pop(ns_id)
        try:
            self._selector.unregister(process.stdout)
        except (KeyError, ValueError):
            pass
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()

    def _read(self, key: selectors.SelectorKey) -> None:
        ns_id = key.data
        try:
            chunk = os.read(key.fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            self._due[ns_id] = time.monotonic() + self._debounce
        else:  # the monitor ended (namespace gone, or killed): restart it on a later poll
            self._end_monitor(ns_id)

    def _poll_legacy(self) -> None:
        with self._lock:
            wanted = dict(self._wanted)
        for ns_id, path in wanted.items():
            if ns_id not in self._legacy:
                continue
            now = self._legacy_hash(path)
            if now != self._legacy[ns_id]:
                self._legacy[ns_id] = now
                self._due.setdefault(ns_id, time.monotonic())

    def _legacy_hash(self, path: str) -> str:
        """Hash of the legacy rules without counters ("" when there are no legacy tables)."""
        try:
            families = readers.legacy_families(path)
        except OSError:
            return ""
        digest = hashlib.sha256()
        for family in sorted(families):
            tool = readers.SAVE_TOOLS[("legacy", family)]
            done = subprocess.run(["nsenter", f"--net={path}", "--", tool], capture_output=True,
                                  timeout=readers.TIMEOUT)
            # The first line says when the dump was taken: leave it out.
            digest.update(b"\n".join(l for l in done.stdout.splitlines() if not l.startswith(b"#")))
        return digest.hexdigest() if families else ""

    def _fire(self, ns_id: str) -> None:
        try:
            self._on_change(ns_id)
        except Exception as err:  # noqa: BLE001 - one failed re-read must not end the watch
            self.errors.append(f"re-reading {ns_id} after a firewall change failed: {err}")
            del self.errors[:-20]
