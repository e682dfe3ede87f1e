"""Keeping the picture live: one bound netlink socket per namespace, deltas to subscribers.

One thread owns an epoll set of every namespace's event socket, inotify on the netns
directories, and /proc/self/mountinfo (POLLPRI when the mount table changes, which is how a
bind-mounted namespace appears or goes). An event re-dumps only the namespace it came from;
the snapshot and its Cytoscape elements are rebuilt from cached per-namespace reads (pure,
cheap) and the difference is published. ENOBUFS (the kernel dropped events) and every
heal_interval trigger a full re-dump; every rescan_interval /proc is searched for namespaces
only a process holds.
"""
from __future__ import annotations

import atexit
import ctypes
import dataclasses
import errno
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping

from bridgescope.collector.firewall import FirewallScan
from bridgescope.collector.firewall.monitor import FirewallWatch
from bridgescope.collector.kernel.namespaces import NetnsRef, discover, resolve_netns
from bridgescope.collector.kernel.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    SOL_NETLINK,
    NamespaceHandle,
    NamespaceRead,
    open_handles,
    reread,
)
from bridgescope.collector.kernel.snapshot import (
    NamespacePart,
    join_parts,
    merge_firewall,
    namespace_part,
    nat_view,
    path_or_blank,
    read_firewall,
    vanished_warnings,
    with_nat,
)
from bridgescope.collector.kernel.veth import likely_homes, pair, resolve_nsids, wanted_nsids
from bridgescope.collector.live.fanout import GraphFanout
from bridgescope.collector.model import Namespace, Snapshot
from bridgescope.collector.render.graph import diff_elements, patch_elements, to_elements
from bridgescope.collector.rules.nat import NatView

WATCHED_DIRS = ("/run/netns", "/run/docker/netns")
IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO = 0x100, 0x200, 0x40, 0x80
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
RTNLGRP_IPV4_NETCONF = 24  # ip_forward and friends changing
SETTLE = 0.002  # after a first event, wait this long for the rest of its burst
# After a mount/netns-dir change, look again a little later: a process that happened to be
# inside a just-deleted namespace (another tool scanning it) keeps it alive for a moment.
RECHECK_AFTER = (0.3, 2.0)
QUEUE_LIMIT = 1000

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, host: str | None = None, *, rescan_interval: float = 10.0,
                 heal_interval: float = 60.0, firewall: bool = True):
        self._host: NetnsRef = resolve_netns(host)  # fails now, with one clear line
        self.rescan_interval = rescan_interval
        self.heal_interval = heal_interval
        self.firewall = firewall
        self._lock = threading.RLock()
        self._namespaces: dict[str, Namespace] = {}
        self._handles: dict[str, NamespaceHandle] = {}
        self._reads: dict[str, NamespaceRead] = {}
        self._nsids: dict[str, dict[int, str]] = {}
        self._fw: dict[str, FirewallScan] = {}
        self._fw_merged: FirewallScan | None = None
        self._fw_dirty: set[str] = set()  # namespaces whose rules were re-read since the last build
        self._nat: dict[str, NatView] = {}  # per namespace: NAT is interpreted where its rules live
        self._parts: dict[str, NamespacePart] = {}
        self._pointing: dict[str, set[str]] = {}  # namespace -> namespaces whose veths reach it
        self._dirty: set[str] | None = None  # namespaces to rebuild; None = everything
        self._relayout = True  # the set of namespaces changed: positions must be recomputed
        self._gone: set[str] = set()  # namespaces forgotten since the last build
        self._warnings: tuple[str, ...] = ()
        self._snapshot = Snapshot()
        self._elements: list[dict] = []
        self._version = 0
        self._fanout = GraphFanout(QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll: select.epoll | None = None
        self._fw_watch = None
        self._rechecks: list[float] = []
        self.on_error: Callable[[BaseException], None] | None = None

    # ---- public -----------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def elements(self) -> list[dict]:
        return self._elements

    @property
    def version(self) -> int:
        return self._version

    def start(self) -> Watcher:
        """Read everything once, then watch in a background thread."""
        with self._lock:
            self._epoll = select.epoll()
            self._epoll.register(self._wake_r, select.EPOLLIN)
            self._sync_namespaces(discover(self._host))
            self._rebuild()
        self._start_firewall_watch()
        atexit.register(self.stop)  # an exception in the caller must not orphan rule monitors
        self._thread = threading.Thread(target=self._run, name="bridgescope-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        atexit.unregister(self.stop)
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fw_watch is not None:
            self._fw_watch.stop()
        with self._lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()
            if self._epoll is not None:
                self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def subscribe(self) -> queue.Queue:
        """A queue that first gets the whole graph, then every delta."""
        with self._lock:  # the graph and the deltas after it must not interleave
            return self._fanout.subscribe(self._version, self._elements)

    def unsubscribe(self, q: queue.Queue) -> None:
        self._fanout.unsubscribe(q)

    def refresh(self, ns_id: str | None = None) -> None:
        """Re-read now: one namespace's links and firewall, or (None) everything incl. discovery.

        Plumbing calls this after a change; FirewallWatch calls it when rules changed.
        """
        with self._lock:
            if ns_id is None:
                known = self._known_after_sync()
                self._reread(known)
                if self.firewall:
                    self._rescan_firewall(known)
            elif ns_id in self._handles:
                self._reread([ns_id])
                if self.firewall:
                    self._rescan_firewall([ns_id])
            self._publish()

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        inotify = self._inotify()
        mountinfo = open("/proc/self/mountinfo", "rb")  # noqa: SIM115 - polled for the loop's life
        self._epoll.register(mountinfo.fileno(), select.EPOLLPRI | select.EPOLLERR)
        next_rescan = time.monotonic() + self.rescan_interval
        next_heal = time.monotonic() + self.heal_interval
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min([next_rescan, next_heal, *self._rechecks]) - time.monotonic())
                ready = self._epoll.poll(timeout)
                if self._stop.is_set():
                    return
                if ready:
                    time.sleep(SETTLE)
                    ready += self._epoll.poll(0)
                try:
                    self._handle(ready, inotify, mountinfo)
                    now = time.monotonic()
                    if now >= next_heal:
                        self._heal()
                        next_heal, next_rescan = now + self.heal_interval, now + self.rescan_interval
                    elif now >= next_rescan or any(now >= t for t in self._rechecks):
                        self._rechecks = [t for t in self._rechecks if t > now]
                        self._rediscover()
                        if now >= next_rescan:
                            next_rescan = now + self.rescan_interval
                except Exception as err:
                    log.exception("watcher: event handling failed; the next heal re-reads everything")
                    if self.on_error is not None:
                        self.on_error(err)
        finally:
            mountinfo.close()
            if inotify is not None:
                os.close(inotify)

    def _handle(self, ready: list[tuple[int, int]], inotify: int | None, mountinfo) -> None:
        with self._lock:
            self._handle_locked(ready, inotify, mountinfo)

    def _handle_locked(self, ready: list[tuple[int, int]], inotify: int | None, mountinfo) -> None:
        by_fd = {h.events.fileno(): ns_id for ns_id, h in self._handles.items() if h.events is not None}
        dirty: set[str] = set()
        overflow = rediscover = False
        for fd, _ in ready:
            if fd == self._wake_r:
                _drain_fd(fd)
            elif inotify is not None and fd == inotify:
                _drain_fd(fd)
                rediscover = True
            elif fd == mountinfo.fileno():
                mountinfo.seek(0)
                mountinfo.read()
                rediscover = True
            elif fd in by_fd:
                ns_id = by_fd[fd]
                if _drain_socket(self._handles[ns_id].events):
                    dirty.add(ns_id)
                else:
                    overflow = True
        if overflow:
            self._heal()
            return
        if rediscover:
            self._rediscover(publish=False)
            now = time.monotonic()
            self._rechecks = sorted(set(self._rechecks) | {now + delay for delay in RECHECK_AFTER})
        if dirty or rediscover:
            self._reread([ns for ns in dirty if ns in self._handles])
            self._publish()

    def _heal(self) -> None:
        """Full re-dump: after dropped events, and periodically in case anything slipped by."""
        with self._lock:
            known = self._known_after_sync()
            self._nsids.clear()
            self._dirty = None
            self._reread(known)
            if self.firewall and self._fw_watch is None:
                self._rescan_firewall(known)
            self._publish()

    def _known_after_sync(self) -> list[str]:
        """Rediscover; the namespaces that were already open (the new ones were just read)."""
        opened = self._sync_namespaces(discover(self._host))
        return [ns_id for ns_id in self._handles if ns_id not in opened]

    def _rediscover(self, publish: bool = True) -> None:
        with self._lock:
            self._sync_namespaces(discover(self._host))
            if publish:
                self._publish()

    # ---- state ------------------------------------------------------------------------------

    def _sync_namespaces(self, found: list[Namespace]) -> set[str]:
        """Open (and read) what is new, close what is gone, keep names/paths current;
        returns the ids it opened."""
        current = {ns.id: ns for ns in found}
        for ns_id in [n for n in self._handles if n not in current]:
            self._forget(ns_id)
        new = {ns.id: ns for ns in found if ns.id not in self._handles}
        handles, reads, failures = open_handles({ns.id: path_or_blank(ns) for ns in new.values()}, events=True)
        for ns_id, handle in handles.items():
            self._handles[ns_id] = handle
            self._reads[ns_id] = reads[ns_id]
            self._epoll.register(handle.events.fileno(), select.EPOLLIN)
            _join_group(handle.events, RTNLGRP_IPV4_NETCONF)
        kept = {ns_id: ns for ns_id, ns in current.items() if ns_id in self._handles}
        if kept.keys() != self._namespaces.keys():
            self._relayout = True
        self._mark(ns_id for ns_id, ns in kept.items() if ns != self._namespaces.get(ns_id))
        self._namespaces = kept
        self._warnings = vanished_warnings(new.values(), failures)
        if self.firewall and handles:
            self._rescan_firewall(list(handles))
        if self._fw_watch is not None:
            self._fw_watch.update(self._fw_paths())
        return set(handles)

    def _mark(self, ns_ids) -> None:
        if self._dirty is not None:
            self._dirty.update(ns_ids)

    def _forget(self, ns_id: str) -> None:
        self._relayout = True
        self._gone.add(ns_id)
        self._mark(self._pointing.pop(ns_id, set()))  # their veths lost a peer
        self._parts.pop(ns_id, None)
        handle = self._handles.pop(ns_id)
        if handle.events is not None:
            self._epoll.unregister(handle.events.fileno())
        handle.close()  # drops our reference: the kernel may now free the namespace
        self._reads.pop(ns_id, None)
        self._nsids.pop(ns_id, None)
        self._fw.pop(ns_id, None)
        self._nat.pop(ns_id, None)
        self._fw_merged = None
        for mapping in self._nsids.values():
            for nsid in [k for k, v in mapping.items() if v == ns_id]:
                del mapping[nsid]

    def _reread(self, ns_ids: list[str]) -> None:
        results = reread([self._handles[n] for n in ns_ids])
        for ns_id, result in results.items():
            if isinstance(result, NamespaceRead):
                before = self._reads.get(ns_id)
                if result != before:
                    self._reads[ns_id] = result
                    self._mark([ns_id])
                    if before is None or _ifindexes(before) != _ifindexes(result):
                        # links came or went: veths elsewhere that point here must re-pair
                        self._mark(self._pointing.get(ns_id, set()))

    def _rescan_firewall(self, ns_ids: list[str]) -> None:
        self._fw_merged = None
        self._fw_dirty.update(ns_ids)
        scanned = read_firewall({n: self._handles[n].proc_path for n in ns_ids if n in self._handles})
        rules, chains, proxies = (_by_netns(items) for items in
                                  (scanned.rules, scanned.chains, scanned.proxies))
        for ns_id in ns_ids:
            self._fw[ns_id] = FirewallScan(rules=tuple(rules.get(ns_id, ())),
                                           chains=tuple(chains.get(ns_id, ())),
                                           proxies=tuple(proxies.get(ns_id, ())))
        if scanned.warnings and ns_ids:
            first = self._fw.get(ns_ids[0], FirewallScan())
            self._fw[ns_ids[0]] = dataclasses.replace(first, warnings=first.warnings + scanned.warnings)

    def _resolve_missing_nsids(self, ns_ids) -> None:
        homes = None
        fds = {}
        for ns_id in ns_ids:
            dump = self._reads[ns_id].dump
            known = self._nsids.get(ns_id)
            if known is not None and wanted_nsids(dump) <= set(known):
                continue
            if homes is None:  # built once, only when some nsid is new
                homes = likely_homes({n: r.dump for n, r in self._reads.items()})
                fds = {n: h.fd for n, h in self._handles.items()}
            try:
                self._nsids[ns_id] = resolve_nsids(ns_id, dump, self._handles[ns_id].rtnl, fds, homes)
            except OSError:
                self._nsids[ns_id] = {}

    def _rebuild(self) -> dict:
        """Bring snapshot and elements up to date; returns the delta."""
        dirty, self._dirty = self._dirty, set()
        relayout, self._relayout = self._relayout or dirty is None, False
        gone, self._gone = self._gone, set()
        if dirty is None:
            affected = set(self._namespaces)
        else:
            affected = (set(dirty) | (self._namespaces.keys() - self._parts.keys())) & self._namespaces.keys()
        self._resolve_missing_nsids(affected)
        dumps = {n: r.dump for n, r in self._reads.items()} if dirty is None else _DumpView(self._reads)
        peers = pair(dumps, self._nsids, only=affected)
        moved_ips: set[str] = set()
        for ns_id in affected:
            before = self._parts.get(ns_id)
            part = namespace_part(self._namespaces[ns_id], self._reads[ns_id], peers)
            self._parts[ns_id] = part
            moved_ips |= _ips(before) ^ _ips(part)
            for iface in part.interfaces:
                if iface.peer is not None:
                    self._pointing.setdefault(iface.peer.split("/", 1)[0], set()).add(ns_id)
        order = sorted(self._namespaces.values(), key=lambda ns: (not ns.is_host, ns.inode))
        snap = join_parts((self._parts[ns.id] for ns in order), taken_at=time.time(), warnings=self._warnings)
        if self.firewall:
            snap = self._with_nat(snap, order, everything=dirty is None, moved_ips=moved_ips, gone=gone)
        old = self._elements
        self._snapshot = snap
        patched = None if relayout or not old else patch_elements(old, snap, affected)
        if patched is None:
            self._elements = to_elements(snap)
            return diff_elements(old, self._elements)
        self._elements, delta = patched
        return delta

    def _with_nat(self, snap: Snapshot, order: list[Namespace], *, everything: bool,
                  moved_ips: set[str], gone: set[str]) -> Snapshot:
        """Re-interpret NAT only where rules changed, or where a forward's target address
        moved or its container went away; at N namespaces most hold no rules at all."""
        if self._fw_merged is None:
            self._fw_merged = merge_firewall(self._fw[ns.id] for ns in order if ns.id in self._fw)
        redo = set(self._fw) if everything else set(self._fw_dirty)
        if moved_ips or gone:
            redo |= {n for n, v in self._nat.items()
                     if any(p.to_ip in moved_ips or p.container in gone for p in v.port_forwards)}
        self._fw_dirty = set()
        for ns_id in redo & self._fw.keys():
            self._nat[ns_id] = nat_view(self._fw[ns_id], snap)
        return with_nat(snap, self._fw_merged, (self._nat[ns.id] for ns in order if ns.id in self._nat))

    def _publish(self) -> None:
        delta = self._rebuild()
        if not (delta["added"] or delta["removed"] or delta["changed"]):
            return
        self._version += 1
        self._fanout.publish({"type": "delta", "version": self._version, **delta}, self._elements)

    # ---- helpers ----------------------------------------------------------------------------

    def _fw_paths(self) -> dict[str, str]:
        return {ns_id: h.proc_path for ns_id, h in self._handles.items()}

    def _start_firewall_watch(self) -> None:
        if not self.firewall:
            return
        self._fw_watch = FirewallWatch(self._fw_paths(), self.refresh)
        self._fw_watch.start()

    def _inotify(self) -> int | None:
        dirs = [d for d in WATCHED_DIRS if os.path.isdir(d)]  # watch, never create
        if not dirs:
            return None
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        for directory in dirs:
            _libc.inotify_add_watch(fd, directory.encode(), IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
        self._epoll.register(fd, select.EPOLLIN)
        return fd


def _ifindexes(read: NamespaceRead) -> set[int]:
    return {link.ifindex for link in read.dump.links}


def _ips(part: NamespacePart | None) -> set[str]:
    if part is None:
        return set()
    return {cidr.split("/", 1)[0] for iface in part.interfaces for cidr in iface.addresses}


class _DumpView(Mapping):
    """{namespace id: NamespaceDump} over the cached reads, without copying them all."""

    def __init__(self, reads: Mapping[str, NamespaceRead]):
        self._reads = reads

    def __getitem__(self, ns_id: str):
        return self._reads[ns_id].dump

    def __iter__(self):
        return iter(self._reads)

    def __len__(self) -> int:
        return len(self._reads)


def _join_group(sock: socket.socket, group: int) -> None:
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except OSError:
        pass  # an older kernel without that group: ip_forward changes wait for the heal


def _drain_socket(sock: socket.socket) -> bool:
    """Read every pending event; False when the kernel reported dropped events (ENOBUFS)."""
    while True:
        try:
            sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                return False
            raise


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _by_netns(items) -> dict[str, list]:
    """One pass: {namespace id: its items}, in order."""
    grouped: dict[str, list] = {}
    for item in items:
        grouped.setdefault(item.netns, []).append(item)
    return grouped
