"""Keeping the picture live: one bound netlink socket per namespace, deltas to subscribers.

One thread owns everything that changes: an epoll set of every namespace's event socket,
inotify on the netns directories, /proc/self/mountinfo (POLLPRI when the mount table
changes, which is how a bind-mounted namespace appears or goes), and the handles. An event
re-dumps only the namespace it came from; `incremental.advance` (pure) turns those reads into
the next picture and its delta, which is published. ENOBUFS (the kernel dropped events) or a
failed round trigger a full re-dump; besides, every namespace is re-dumped once per
heal_interval, a few at a time, so that no round holds a change back for long on a host
with a thousand namespaces. A netns file or a mount coming or going is looked up in the mount
table; every rescan_interval /proc is searched too, for namespaces only a process holds.
Other threads ask for a re-read with `refresh`, which the loop performs, so no state is
shared but the published picture.
"""
from __future__ import annotations

import atexit
import errno
import logging
import math
import os
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from bridgescope.collector.firewall import FirewallScan
from bridgescope.collector.firewall.monitor import FirewallWatch
from bridgescope.collector.firewall.readers import forget_reads
from bridgescope.collector.kernel.namespaces import NetnsRef, discover, rediscover, resolve_netns
from bridgescope.collector.kernel.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    SOL_NETLINK,
    NamespaceHandle,
    NamespaceRead,
    RtnlDump,
    apply_events,
    open_handles,
    reread_sysctls,
)
from bridgescope.collector.kernel.netlink import reread as reread_handles
from bridgescope.collector.kernel.setns import libc
from bridgescope.collector.kernel.snapshot import path_or_blank, read_firewall, vanished_warnings
from bridgescope.collector.kernel.veth import likely_homes, resolve_nsids
from bridgescope.collector.live.fanout import GraphFanout
from bridgescope.collector.live.incremental import LiveState, Reads, advance, needs_nsids
from bridgescope.collector.live.spans import Spans
from bridgescope.collector.model import Namespace, Snapshot

WATCHED_DIRS = ("/run/netns", "/run/docker/netns")
IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO = 0x100, 0x200, 0x40, 0x80
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
RTNLGRP_IPV4_NETCONF = 24  # ip_forward and friends changing
SETTLE = 0.002  # after a first event, wait this long for the rest of its burst
# After a mount/netns-dir change, look again a little later: a process that happened to be
# inside a just-deleted namespace (another tool scanning it) keeps it alive for a moment.
RECHECK_AFTER = (0.3, 2.0)
# Other tools creating and deleting namespaces in a burst would otherwise cost one discovery
# (a walk of /proc and of the mount table) each, and the changes of namespaces already
# watched would wait behind them: discoveries come at most this often, the rest is a recheck.
DISCOVERY_GAP = 0.5
QUEUE_LIMIT = 1000
HEAL_STEP = 1.0  # seconds between two slices of the periodic re-dump, at most
HEAL_SLICE = 4  # namespaces re-dumped in one slice, at most: a change waits behind one slice
# A round lets go of the interpreter at every read (netlink, a setns hop, the publish); taking
# it back waits up to one switch interval while another thread computes (the doctor's worker
# runs for tens of milliseconds after each change at a thousand containers). The default 5 ms,
# paid at each of a round's reads, was most of a delta's latency there.
SWITCH_INTERVAL = 0.0005

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, host: str | None = None, *, rescan_interval: float = 10.0,
                 heal_interval: float = 60.0, firewall: bool = True):
        self._host: NetnsRef = resolve_netns(host)  # fails now, with one clear line
        self.rescan_interval = rescan_interval
        self.heal_interval = heal_interval
        self.firewall = firewall
        self._picture = LiveState(firewall=firewall)
        self._handles: dict[str, NamespaceHandle] = {}  # the loop's alone (before start: start's)
        self._by_fd: dict[int, str] = {}  # event socket -> its namespace, kept with the handles
        self._version = 0
        self._publishing = threading.Lock()  # a new subscriber's graph and later deltas must not interleave
        self._fanout = GraphFanout(QUEUE_LIMIT)
        self._requests: queue.SimpleQueue[tuple[str | None, threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll: select.epoll | None = None
        self._fw_watch = None
        self._rechecks: list[float] = []
        self._heal_queue: list[str] = []  # namespaces the periodic re-dump has yet to visit this turn
        self._heal_all = False  # a round failed: the next heal re-reads everything at once
        self._discovered_at = 0.0
        self.on_error: Callable[[BaseException], None] | None = None
        self._spans = Spans.from_env()

    # ---- public -----------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._picture.snapshot

    @property
    def elements(self) -> list[dict]:
        return self._picture.elements

    @property
    def version(self) -> int:
        return self._version

    def start(self) -> Watcher:
        """Read everything once, then watch in a background thread."""
        self._epoll = select.epoll()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._round(discovery=True)
        self._start_firewall_watch()
        atexit.register(self.stop)  # an exception in the caller must not orphan rule monitors
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
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
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._epoll is not None:
            self._epoll.close()
        while not self._requests.empty():  # nobody waits for a stopped watcher
            self._requests.get_nowait()[1].set()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def subscribe(self) -> queue.Queue:
        """A queue that first gets the whole graph, then every delta."""
        with self._publishing:
            return self._fanout.subscribe(self._version, self._picture.elements)

    def unsubscribe(self, q: queue.Queue) -> None:
        self._fanout.unsubscribe(q)

    def refresh(self, ns_id: str | None = None, timeout: float = 30.0) -> None:
        """Re-read now: one namespace's links and firewall, or (None) everything incl. discovery;
        returns once the result is published.

        Plumbing calls this after a change; FirewallWatch calls it when rules changed. The loop
        does the reading, so this only asks and waits.
        """
        if self._thread is None or threading.current_thread() is self._thread or self._stop.is_set():
            if not self._stop.is_set():
                self._refresh(ns_id)
            return
        done = threading.Event()
        self._requests.put((ns_id, done))
        os.write(self._wake_w, b"r")
        done.wait(timeout)

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        inotify = self._inotify()
        mountinfo = open("/proc/self/mountinfo", "rb")  # noqa: SIM115 - polled for the loop's life
        self._epoll.register(mountinfo.fileno(), select.EPOLLPRI | select.EPOLLERR)
        next_rescan = time.monotonic() + self.rescan_interval
        next_heal = time.monotonic() + self._heal_step()
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
                    if now >= next_heal and self._heal_all:
                        self._heal_all = False
                        self._heal()
                        next_heal, next_rescan = now + self._heal_step(), now + self.rescan_interval
                    elif now >= next_heal:
                        self._heal_slice()
                        next_heal = now + self._heal_step()
                    elif now >= next_rescan or any(now >= t for t in self._rechecks):
                        self._rechecks = [t for t in self._rechecks if t > now]
                        self._round(discovery=True, walk_proc=now >= next_rescan)
                        if now >= next_rescan:
                            next_rescan = now + self.rescan_interval
                except Exception as err:
                    log.exception("watcher: event handling failed; the next heal re-reads everything")
                    self._heal_all = True
                    if self.on_error is not None:
                        self.on_error(err)
        finally:
            mountinfo.close()
            if inotify is not None:
                os.close(inotify)
            while not self._requests.empty():
                self._requests.get_nowait()[1].set()

    def _handle(self, ready: list[tuple[int, int]], inotify: int | None, mountinfo) -> None:
        by_fd = self._by_fd
        dirty: dict[str, list[bytes]] = {}
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
                chunks = _drain_socket(self._handles[ns_id].events)
                if chunks is None:
                    overflow = True
                else:
                    dirty.setdefault(ns_id, []).extend(chunks)
        self._serve_requests()
        if overflow:
            self._heal()
            return
        if rediscover:
            now = time.monotonic()
            self._rechecks = sorted(set(self._rechecks) | {now + delay for delay in RECHECK_AFTER})
            if now - self._discovered_at < DISCOVERY_GAP:
                self._rechecks = sorted({*self._rechecks, self._discovered_at + DISCOVERY_GAP})
                rediscover = False
        if dirty:  # first, so that a change in a watched namespace never waits behind arrivals
            self._round(events=dirty)
        if rediscover:
            self._round(discovery=True, walk_proc=False)

    def _serve_requests(self) -> None:
        while not self._requests.empty():
            ns_id, done = self._requests.get_nowait()
            try:
                self._refresh(ns_id)
            finally:
                done.set()

    def _refresh(self, ns_id: str | None) -> None:
        if ns_id is None:
            self._round(discovery=True, reread=self._handles, firewall=self._handles)
        elif ns_id in self._handles:
            self._round(reread=[ns_id], firewall=[ns_id])

    def _heal(self) -> None:
        """Full re-dump: after dropped events, and periodically in case anything slipped by."""
        self._round(discovery=True, reread=self._handles, firewall=None if self._fw_watch else self._handles,
                    full=True)

    def _heal_size(self) -> int:
        return max(1, min(HEAL_SLICE, math.ceil(len(self._handles) * HEAL_STEP / self.heal_interval)))

    def _heal_step(self) -> float:
        """Seconds between slices, so that each namespace is re-read once per heal_interval."""
        return self.heal_interval * self._heal_size() / max(1, len(self._handles))

    def _heal_slice(self) -> None:
        """Re-dump the next share of the namespaces."""
        if not self._heal_queue:
            self._heal_queue = sorted(self._handles)
        size = self._heal_size()
        batch = [n for n in self._heal_queue[:size] if n in self._handles]
        self._heal_queue = self._heal_queue[size:]
        if batch:
            self._round(reread=batch, firewall=None if self._fw_watch else batch)

    # ---- one round: read at the edge, then advance the pure picture --------------------------

    def _round(self, *, discovery: bool = False, walk_proc: bool = True, reread: Iterable[str] = (),
               firewall: Iterable[str] | None = (), full: bool = False,
               events: Mapping[str, list[bytes]] | None = None) -> None:
        """Read what is asked (and whatever discovery finds new), advance the picture, publish.

        Discovery without `walk_proc` reads the mount table alone (what a netns file or a mount
        coming or going changes), leaving the walk of /proc to the rescan. `events` ({namespace:
        what its event socket received}) are applied to the cached dump where they say all
        there is to know; the others are re-dumped."""
        wanted = set(reread)
        namespaces = warnings = None
        dumps: dict[str, NamespaceRead] = {}
        spans = self._spans
        spans.begin()
        if discovery:
            self._discovered_at = time.monotonic()
            with spans.span("discovery"):
                found = discover(self._host) if walk_proc else \
                    rediscover(self._picture.namespaces.values(), self._host)
                namespaces, dumps, warnings = self._sync_namespaces(found)
            if _known(namespaces, self._picture.namespaces) and warnings == self._picture.warnings:
                namespaces = warnings = None  # found what the picture holds: nothing to take in
        with spans.span("reads"):
            applied = self._apply_events(events or {}, wanted)
            fresh = reread_handles([self._handles[n] for n in wanted if n in self._handles])
        dumps.update({n: r for n, r in {**applied, **fresh}.items() if isinstance(r, NamespaceRead)})
        if not (namespaces is not None or full or (self.firewall and firewall)) and \
                all(r == self._picture.reads.get(n) for n, r in dumps.items()):
            # the usual heal slice: nothing new, so the picture (and its snapshot's identity,
            # which the doctor's worker watches) stays as it was
            spans.end(unchanged=True, events=len(events or {}), reread=len(wanted), read=len(dumps))
            return
        scanned = set(firewall or ()) | (dumps.keys() - self._picture.reads.keys())
        with spans.span("firewall"):
            fw = self._read_firewall(sorted(n for n in scanned if n in self._handles)) if self.firewall else {}
        new = bool(namespaces is not None and namespaces.keys() - self._picture.namespaces.keys())
        with spans.span("nsids"):
            nsids = self._resolve(needs_nsids(self._picture, dumps, everything=full, new_namespaces=new), dumps)
        with spans.span("advance"):
            picture, delta = advance(self._picture, Reads(taken_at=time.time(), namespaces=namespaces, dumps=dumps,
                                                         nsids=nsids, firewall=fw, warnings=warnings, full=full))
        with spans.span("publish"), self._publishing:
            self._picture = picture
            if delta["added"] or delta["removed"] or delta["changed"]:
                self._version += 1
                self._fanout.publish({"type": "delta", "version": self._version, **delta}, picture.elements)
        spans.end(discovered=discovery and ("proc" if walk_proc else "mounts"), full=full, events=len(events or {}),
                  reread=len(wanted), read=len(dumps), firewall_read=len(fw), namespaces=len(picture.namespaces),
                  delta=[len(delta[k]) for k in ("added", "removed", "changed")])

    def _apply_events(self, events: Mapping[str, list[bytes]], redump: set[str]) -> dict[str, NamespaceRead]:
        """Cached dumps brought up to date by their events (the sysctls re-read alone when a
        netconf message came or the bridges changed, since a bridge's own keys follow it); the
        rest joins `redump`."""
        out: dict[str, NamespaceRead] = {}
        sysctls_for: dict[NamespaceHandle, list[str]] = {}
        for ns_id, chunks in events.items():
            before = self._picture.reads.get(ns_id)
            applied = apply_events(before.dump, chunks) if before is not None and ns_id in self._handles else None
            if applied is None:
                redump.add(ns_id)
                continue
            dump, netconf = applied
            out[ns_id] = NamespaceRead(dump, before.sysctls)
            bridges = _bridges(dump)
            if netconf or bridges != _bridges(before.dump):
                sysctls_for[self._handles[ns_id]] = sorted(bridges)
        for ns_id, sysctls in reread_sysctls(sysctls_for).items():
            if isinstance(sysctls, tuple):
                out[ns_id] = NamespaceRead(out[ns_id].dump, sysctls)
            else:
                del out[ns_id]
                redump.add(ns_id)
        return out

    def _sync_namespaces(self, found: list[Namespace]
                         ) -> tuple[dict[str, Namespace], dict[str, NamespaceRead], tuple[str, ...]]:
        """Open (and read) what is new, close what is gone; (present namespaces, first reads of
        the new ones, warnings about those that vanished while being opened)."""
        current = {ns.id: ns for ns in found}
        gone = [n for n in self._handles if n not in current]
        for ns_id in gone:
            handle = self._handles.pop(ns_id)
            if handle.events is not None:
                self._epoll.unregister(handle.events.fileno())
                del self._by_fd[handle.events.fileno()]
            handle.close()  # drops our reference: the kernel may now free the namespace
        forget_reads(gone)  # a new namespace may be given a freed one's inode, and so its id
        new = [ns for ns in found if ns.id not in self._handles]
        handles, reads, failures = open_handles({ns.id: path_or_blank(ns) for ns in new}, events=True)
        for ns_id, handle in handles.items():
            self._handles[ns_id] = handle
            self._by_fd[handle.events.fileno()] = ns_id
            self._epoll.register(handle.events.fileno(), select.EPOLLIN)
            _join_group(handle.events, RTNLGRP_IPV4_NETCONF)
        if self._fw_watch is not None:
            self._fw_watch.update(self._fw_paths())
        present = {ns_id: ns for ns_id, ns in current.items() if ns_id in self._handles}
        return present, reads, vanished_warnings(new, failures)

    def _read_firewall(self, ns_ids: list[str]) -> dict[str, FirewallScan]:
        """Each namespace's rules; the scan's warnings ride on the first one."""
        if not ns_ids:
            return {}
        # reuse: the handles keep these namespaces (and so their ids) alive between reads
        scanned = read_firewall({n: self._handles[n].proc_path for n in ns_ids}, reuse=True)
        rules, chains, proxies = (_by_netns(items) for items in (scanned.rules, scanned.chains, scanned.proxies))
        out = {n: FirewallScan(rules=tuple(rules.get(n, ())), chains=tuple(chains.get(n, ())),
                               proxies=tuple(proxies.get(n, ()))) for n in ns_ids}
        out[ns_ids[0]] = FirewallScan(out[ns_ids[0]].rules, out[ns_ids[0]].chains, scanned.warnings,
                                      out[ns_ids[0]].proxies)
        return out

    def _resolve(self, ns_ids: list[str], dumps: Mapping[str, NamespaceRead]) -> dict[str, dict[int, str]]:
        """Ask the kernel which namespace each new nsid stands for (a question per candidate)."""
        ns_ids = [n for n in ns_ids if n in self._handles]
        if not ns_ids:
            return {}
        merged = {**{n: r.dump for n, r in self._picture.reads.items()}, **{n: r.dump for n, r in dumps.items()}}
        homes = likely_homes(merged)
        fds = {n: h.fd for n, h in self._handles.items()}
        out = {}
        for ns_id in ns_ids:
            try:
                out[ns_id] = resolve_nsids(ns_id, merged[ns_id], self._handles[ns_id].rtnl, fds, homes)
            except OSError:
                out[ns_id] = {}
        return out

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
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        for directory in dirs:
            libc.inotify_add_watch(fd, directory.encode(), IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
        self._epoll.register(fd, select.EPOLLIN)
        return fd


def _known(found: Mapping[str, Namespace], known: Mapping[str, Namespace]) -> bool:
    """The same namespaces, each the very object the picture holds (rediscovery keeps those
    it finds unchanged)."""
    return found.keys() == known.keys() and all(ns is known[ns_id] for ns_id, ns in found.items())


def _bridges(dump: RtnlDump) -> set[str]:
    return {link.name for link in dump.links if link.kind == "bridge"}


def _join_group(sock: socket.socket, group: int) -> None:
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except OSError:
        pass  # an older kernel without that group: ip_forward changes wait for the heal


def _drain_socket(sock: socket.socket) -> list[bytes] | None:
    """Every pending event; None when the kernel reported dropped events (ENOBUFS)."""
    chunks = []
    while True:
        try:
            chunks.append(sock.recv(1 << 16, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return chunks
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                return None
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
