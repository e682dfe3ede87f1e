"""Tell the watcher which namespaces' firewall rules changed.

nf_tables announces every change (rule, chain, set, table; whether nft, iptables-nft,
Docker or firewalld made it) to the netlink group NFNLGRP_NFTABLES - what `nft monitor`
and `xtables-monitor` print. We listen to that group directly: one netlink socket per
namespace, opened from a thread that joined the namespace for the moment (a socket stays
in the namespace it was created in), all multiplexed by one thread. That is an fd per
namespace instead of an `nft monitor` process (3.7 MB each, and orphaned for good when the
watching process is killed). Messages are only a trigger: a burst (Docker adds a dozen
rules per container) is debounced, then on_change(ns_id) and the caller re-reads.

Legacy x_tables have no events (xtables-legacy(8)), so namespaces that have legacy tables
are polled: a hash of `iptables-legacy-save` without counters.
"""
from __future__ import annotations

import errno
import hashlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping

from bridgescope.collector.firewall import readers
from bridgescope.collector.firewall.nftinfo import NETLINK_NETFILTER
from bridgescope.collector.kernel.netlink import NETLINK_ADD_MEMBERSHIP, SOL_NETLINK
from bridgescope.collector.kernel.setns import inside

DEBOUNCE = 0.2  # seconds of quiet after the last event before re-reading
POLL = 2.0  # legacy hash polling period; also how soon a lost subscription is retried
TICK = 0.05
NFNLGRP_NFTABLES = 7


def subscribe(path: str) -> socket.socket:
    """A netlink socket in the namespace at path, receiving its nf_tables change events."""
    with inside(path):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


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
        self._sockets: dict[str, tuple[str, socket.socket]] = {}  # ns -> (path, socket)
        self._due: dict[str, float] = {}  # ns -> monotonic time to report it
        self._legacy: dict[str, str] = {}  # ns -> hash of its legacy rules ("" = none)
        self._next_poll = 0.0
        self.errors: list[str] = []  # what went wrong in callbacks or subscriptions, newest last

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
        for ns_id in list(self._sockets):
            self._unsubscribe(ns_id)
        self._selector.close()

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        # The first pass only subscribes and hashes what is new; polling starts one period later.
        self._next_poll = time.monotonic() + self._poll
        while not self._stop.is_set():
            now = time.monotonic()
            poll_due = now >= self._next_poll
            if poll_due:
                self._next_poll = now + self._poll
            self._reconcile(retry=poll_due)
            if poll_due:
                self._poll_legacy()
            for key, _ in self._selector.select(timeout=TICK) if self._sockets else ():
                self._read(key)
            if not self._sockets:
                self._stop.wait(TICK)
            now = time.monotonic()
            for ns_id in [n for n, when in self._due.items() if when <= now]:
                del self._due[ns_id]
                self._fire(ns_id)

    def _reconcile(self, retry: bool) -> None:
        with self._lock:
            wanted = dict(self._wanted)
        for ns_id, (path, _) in list(self._sockets.items()):
            if wanted.get(ns_id) != path:  # gone, or now reached by another path
                self._unsubscribe(ns_id)
                self._legacy.pop(ns_id, None)
        for gone in (set(self._legacy) | set(self._due)) - set(wanted):
            self._legacy.pop(gone, None)
            self._due.pop(gone, None)
        for ns_id, path in wanted.items():
            if ns_id not in self._legacy:  # new: subscribe now, hash its legacy rules
                self._legacy[ns_id] = self._legacy_hash(path)
                self._subscribe(ns_id, path)
            elif ns_id not in self._sockets and retry:
                self._subscribe(ns_id, path)

    def _subscribe(self, ns_id: str, path: str) -> None:
        try:
            sock = subscribe(path)
        except OSError as err:
            self._note(f"cannot watch the nf_tables rules of {ns_id}: {err.strerror}")
            return
        self._selector.register(sock, selectors.EVENT_READ, ns_id)
        self._sockets[ns_id] = (path, sock)

    def _unsubscribe(self, ns_id: str) -> None:
        _, sock = self._sockets.pop(ns_id)
        self._selector.unregister(sock)
        sock.close()

    def _read(self, key: selectors.SelectorKey) -> None:
        ns_id = key.data
        try:
            while key.fileobj.recv(65536):  # drain: any message means "changed"
                pass
        except BlockingIOError:
            pass
        except OSError as err:
            if err.errno != errno.ENOBUFS:  # ENOBUFS: so many changes we lost some: changed
                self._unsubscribe(ns_id)  # retried on a later poll
                return
        self._due[ns_id] = time.monotonic() + self._debounce

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
            out, problem = readers.finish_tool(readers.start_tool(path, [tool]), tool, path)
            if problem:
                self._note(f"cannot poll the legacy rules: {problem}")
                continue
            digest.update(readers.without_comments(out).encode())  # the dump's date is a comment
        return digest.hexdigest() if families else ""

    def _fire(self, ns_id: str) -> None:
        try:
            self._on_change(ns_id)
        except Exception as err:
            self._note(f"re-reading {ns_id} after a firewall change failed: {err}")

    def _note(self, problem: str) -> None:
        self.errors.append(problem)
        del self.errors[:-20]
