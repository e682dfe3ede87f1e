"""The live picture, advanced by what was just read: pure.

`advance(picture, reads) -> (picture, delta)`: the previous picture (snapshot, elements and
the per-namespace parts they were built from) plus the reads of the namespaces that changed
give the next picture and the Cytoscape delta between the two. Reads are plain data (dumps,
sysctls, nsid maps, firewall scans), so tests replay recorded ones without root; the Watcher
performs the reads and publishes. The work follows the change: only the namespaces read (and
those whose veths point at links that came or went) are rebuilt, NAT is re-interpreted only
where rules changed or a forward's target moved, and elements are patched in place.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from bridgescope.collector.firewall import FirewallScan
from bridgescope.collector.kernel.netlink import NamespaceRead
from bridgescope.collector.kernel.snapshot import (
    NamespacePart,
    join_parts,
    merge_firewall,
    namespace_interfaces,
    namespace_routes,
    nat_view,
    with_nat,
)
from bridgescope.collector.kernel.veth import IfKey, pair, wanted_nsids
from bridgescope.collector.model import Interface, Namespace, Route, Snapshot
from bridgescope.collector.render.graph import diff_elements, drawn, patch_elements
from bridgescope.collector.render.layout import Picture as Layout
from bridgescope.collector.rules.nat import NatView


@dataclass(frozen=True)
class Reads:
    """One round of reads, as plain data.

    namespaces: every namespace now present (None: discovery did not run, the set is unchanged);
    dumps: fresh reads of new or re-read namespaces; nsids: nsid maps resolved this round;
    firewall: rules of the namespaces whose firewall was read; full: everything was re-read
    (a heal), so every part is rebuilt and the picture laid out anew.
    """
    taken_at: float
    namespaces: Mapping[str, Namespace] | None = None
    dumps: Mapping[str, NamespaceRead] = field(default_factory=dict)
    nsids: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    firewall: Mapping[str, FirewallScan] = field(default_factory=dict)
    warnings: tuple[str, ...] | None = None
    full: bool = False


@dataclass(frozen=True)
class LiveState:
    """What the live view shows, and the per-namespace pieces it was assembled from."""
    firewall: bool = True
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    reads: Mapping[str, NamespaceRead] = field(default_factory=dict)
    nsids: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    parts: Mapping[str, NamespacePart] = field(default_factory=dict)
    # per namespace: (own ifindex, the (namespace, ifindex) it points at) of each of its veths
    targets: Mapping[str, frozenset[tuple[int, IfKey]]] = field(default_factory=dict)
    pointing: Mapping[str, frozenset[str]] = field(default_factory=dict)  # namespace -> whose veths point into it
    pointed: Mapping[IfKey, frozenset[IfKey]] = field(default_factory=dict)  # a link -> the veths pointing at it
    fw: Mapping[str, FirewallScan] = field(default_factory=dict)
    fw_merged: FirewallScan | None = None  # every namespace's rules in one scan; None: to merge again
    nat: Mapping[str, NatView] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    snapshot: Snapshot = Snapshot()
    elements: list[dict] = field(default_factory=list)
    layout: Layout | None = None  # the plan the elements were drawn from


def needs_nsids(picture: LiveState, reads: Mapping[str, NamespaceRead], *, everything: bool = False,
                new_namespaces: bool = False) -> list[str]:
    """Namespaces whose veths name an nsid not yet resolved: the edge asks the kernel for those.

    When namespaces appeared, older reads that named an unknown nsid may now resolve too.
    """
    merged = {**picture.reads, **reads}
    scope = merged if everything or new_namespaces else reads
    return [ns_id for ns_id in scope
            if everything or not wanted_nsids(merged[ns_id].dump) <= set(picture.nsids.get(ns_id, {}))]


Dirty = dict[str, "set[int] | None"]  # namespace -> ifindexes to rebuild; None: all of it


def advance(picture: LiveState, reads: Reads) -> tuple[LiveState, dict]:
    """The next picture and the delta that turns the previous elements into its elements."""
    namespaces = dict(picture.namespaces if reads.namespaces is None else reads.namespaces)
    store = _Store(picture)
    dirty: Dirty = {}
    gone = picture.namespaces.keys() - namespaces.keys()
    gone_ids = {i.id for n in gone if n in picture.parts for i in picture.parts[n].interfaces}
    for ns_id in gone:
        for other, ifindexes in store.forget(ns_id).items():
            _mark(dirty, other, ifindexes)
    if reads.namespaces is not None:
        for ns_id in [n for n, ns in namespaces.items()
                      if n in picture.namespaces and ns is not picture.namespaces[n] and ns != picture.namespaces[n]]:
            if dataclasses.replace(namespaces[ns_id], pids=()) != dataclasses.replace(picture.namespaces[ns_id], pids=()):
                _mark(dirty, ns_id, ())
            elif ns_id in store.parts:  # processes come and go all the time: nothing drawn shows them
                part = store.parts[ns_id]
                store.parts[ns_id] = dataclasses.replace(part, namespace=dataclasses.replace(
                    part.namespace, pids=namespaces[ns_id].pids))
    for ns_id, read in reads.dumps.items():
        if ns_id in namespaces:
            for key, ifindexes in store.take_read(ns_id, read).items():
                _mark(dirty, key, ifindexes)
    if reads.full:
        store.nsids = {}
    for ns_id, mapping in reads.nsids.items():
        if mapping != store.nsids.get(ns_id):
            _mark(dirty, ns_id)
        store.nsids[ns_id] = dict(mapping)
    everything = reads.full or not picture.elements
    present = namespaces.keys() & store.reads.keys()
    namespaces = {n: ns for n, ns in namespaces.items() if n in present}
    if everything:
        dirty = dict.fromkeys(present)
    for ns_id in present - store.parts.keys():
        _mark(dirty, ns_id)
    dirty = {n: v for n, v in dirty.items() if n in present}
    moved_ips, if_ids = store.rebuild_parts(namespaces, dirty)
    if reads.namespaces is None and namespaces.keys() == picture.namespaces.keys():
        order = [ns.id for ns in picture.snapshot.namespaces]  # no discovery: the same namespaces, in order
    else:
        order = [ns.id for ns in sorted(namespaces.values(), key=lambda ns: (not ns.is_host, ns.inode))]
    warnings = picture.warnings if reads.warnings is None else reads.warnings
    snap = join_parts((store.parts[ns_id] for ns_id in order), taken_at=reads.taken_at, warnings=warnings)
    if picture.firewall:
        snap = store.with_nat(snap, order, reads.firewall, everything=everything,
                              moved_ips=moved_ips, gone=gone)
    rebuilt = {n for n, ifindexes in dirty.items() if ifindexes is None}
    elements, delta, layout = _elements(picture, snap, set(dirty) | gone, if_ids | gone_ids,
                                        rebuilt | gone | (namespaces.keys() - picture.namespaces.keys()), everything)
    return LiveState(firewall=picture.firewall, namespaces=namespaces, reads=store.reads, nsids=store.nsids,
                   parts=store.parts, targets=store.targets, pointing=store.pointing, pointed=store.pointed,
                   fw=store.fw, fw_merged=store.fw_merged, nat=store.nat, warnings=warnings, snapshot=snap,
                   elements=elements, layout=layout), delta


def _mark(dirty: Dirty, ns_id: str, ifindexes: Iterable[int] | None = None) -> None:
    """Add to what must be rebuilt: some of a namespace's links (None: all of them)."""
    if ifindexes is None:
        dirty[ns_id] = None
    elif ns_id not in dirty:
        dirty[ns_id] = set(ifindexes)
    elif dirty[ns_id] is not None:
        dirty[ns_id] |= set(ifindexes)


def _elements(picture: LiveState, snap: Snapshot, ns_ids: set[str], if_ids: set[str], whole: set[str],
              everything: bool) -> tuple[list[dict], dict, Layout]:
    """Redraw what the round touched; a heal (or the first round) draws everything anew."""
    if everything or not picture.elements or picture.layout is None:
        new, layout = drawn(snap)
        return new, diff_elements(picture.elements, new), layout
    if not (ns_ids or if_ids or whole) and (snap.port_forwards, snap.masquerades) == \
            (picture.snapshot.port_forwards, picture.snapshot.masquerades):
        return picture.elements, {"added": [], "removed": [], "changed": []}, picture.layout  # a re-read found nothing new
    return patch_elements(picture.elements, picture.layout, snap, ns_ids, only=if_ids, whole=whole)


class _Store:
    """The picture's mappings, copied once per round and updated in place (never shared)."""

    def __init__(self, picture: LiveState):
        self.reads = dict(picture.reads)
        self.nsids = dict(picture.nsids)
        self.parts = dict(picture.parts)
        self.targets = dict(picture.targets)
        self.pointing = dict(picture.pointing)
        self.pointed = dict(picture.pointed)
        self.fw = dict(picture.fw)
        self.fw_merged = picture.fw_merged
        self.nat = dict(picture.nat)
        self.replaced: dict[str, NamespaceRead] = {}  # the reads this round's took the place of

    def forget(self, ns_id: str) -> dict[str, set[int]]:
        """Drop a namespace that went; returns the veths that lost their peer ({namespace: ifindexes})."""
        lost_peer: dict[str, set[int]] = {}
        for other in self.pointing.pop(ns_id, frozenset()):
            lost_peer[other] = {own for own, (far, _) in self.targets.get(other, ()) if far == ns_id}
        self._point(ns_id, frozenset())
        for mapping in (self.reads, self.nsids, self.parts, self.nat):
            mapping.pop(ns_id, None)
        if self.fw.pop(ns_id, None) is not None:
            self.fw_merged = None
        for other in [n for n, m in self.nsids.items() if ns_id in m.values()]:
            self.nsids[other] = {k: v for k, v in self.nsids[other].items() if v != ns_id}
        return lost_peer

    def take_read(self, ns_id: str, read: NamespaceRead) -> dict[str, set[int]]:
        """Keep a fresh read; returns {namespace: ifindexes} to rebuild because of it."""
        before = self.reads.get(ns_id)
        if read == before:
            return {}
        self.reads[ns_id] = read
        if before is None:
            return {ns_id: _ifindexes(read)}
        old_links = {link.ifindex: link for link in before.dump.links}
        new_links = {link.ifindex: link for link in read.dump.links}
        came_or_went = old_links.keys() ^ new_links.keys()
        # the links an event left alone are the same objects: no field-by-field comparison
        changed = came_or_went | {i for i, link in new_links.items()
                                  if old_links.get(i, link) is not link and old_links.get(i, link) != link}
        if before.dump.addresses != read.dump.addresses:  # the same objects when no event touched them
            changed |= {a.ifindex for a in set(before.dump.addresses) ^ set(read.dump.addresses)}
        self.replaced[ns_id] = before
        out = {ns_id: changed}  # a link that went is rebuilt as nothing
        # veths elsewhere that point at a link that came or went must be paired again
        for ifindex in came_or_went:
            for far_ns, far_ifindex in self.pointed.get((ns_id, ifindex), ()):
                out.setdefault(far_ns, set()).add(far_ifindex)
        return out

    def rebuild_parts(self, namespaces: Mapping[str, Namespace], dirty: Dirty) -> tuple[set[str], set[str]]:
        """Rebuild what is dirty; (addresses that appeared or went, ids of interfaces rebuilt)."""
        view = _DumpView(self.reads)
        peers = pair(view, self.nsids, only=list(dirty),
                     links={n: v for n, v in dirty.items() if v is not None})
        moved: set[str] = set()
        if_ids: set[str] = set()
        for ns_id, ifindexes in dirty.items():
            read, before = self.reads[ns_id], self.parts.get(ns_id)
            if ifindexes is None or before is None:
                interfaces = namespace_interfaces(ns_id, read, peers)
                old = before.interfaces if before is not None else ()
            else:
                fresh = namespace_interfaces(ns_id, read, peers, only=ifindexes)
                old = [i for i in before.interfaces if i.ifindex in ifindexes]
                interfaces = sorted([i for i in before.interfaces if i.ifindex not in ifindexes] + fresh,
                                    key=lambda i: i.ifindex)
            rebuilt = [i for i in interfaces if ifindexes is None or before is None or i.ifindex in ifindexes]
            part = NamespacePart(dataclasses.replace(namespaces[ns_id], sysctls=read.sysctls), tuple(interfaces),
                                 self._routes(ns_id, read, before, ifindexes))
            self.parts[ns_id] = part
            moved |= _ips(old) ^ _ips(rebuilt)
            if_ids |= {i.id for i in old} | {i.id for i in rebuilt}
            if_ids |= {i.id for i in interfaces if i.master in if_ids}  # a bridge's ports show its owner
            targets = _veth_targets(ns_id, read, self.nsids.get(ns_id, {}), ifindexes if before else None)
            if ifindexes is not None and before is not None:  # the links not rebuilt point where they did
                targets |= {t for t in self.targets.get(ns_id, ()) if t[0] not in ifindexes}
            self._point(ns_id, targets)
        return moved, if_ids

    def _routes(self, ns_id: str, read: NamespaceRead, before: NamespacePart | None,
                ifindexes: set[int] | None) -> tuple[Route, ...]:
        """The namespace's routes: the part's own when the routes read are the same and none
        goes through a link rebuilt (its name may have changed); a host with a thousand veths
        has a thousand link-local routes."""
        was = self.replaced.get(ns_id, read)
        if before is not None and ifindexes is not None and was.dump.routes == read.dump.routes \
                and not any(r.oif in ifindexes for r in read.dump.routes):
            return before.routes
        return tuple(namespace_routes(ns_id, read))

    def _point(self, ns_id: str, targets: frozenset[tuple[int, IfKey]]) -> None:
        before = self.targets.get(ns_id, frozenset())
        if targets == before:
            return
        if targets:
            self.targets[ns_id] = targets
        else:
            self.targets.pop(ns_id, None)
        for own, far in before - targets:
            rest = self.pointed.get(far, frozenset()) - {(ns_id, own)}
            _put(self.pointed, far, rest)
        for own, far in targets - before:
            self.pointed[far] = self.pointed.get(far, frozenset()) | {(ns_id, own)}
        far_before = {far_ns for _, (far_ns, _) in before}
        far_after = {far_ns for _, (far_ns, _) in targets}
        for far_ns in far_before - far_after:
            _put(self.pointing, far_ns, self.pointing.get(far_ns, frozenset()) - {ns_id})
        for far_ns in far_after - far_before:
            self.pointing[far_ns] = self.pointing.get(far_ns, frozenset()) | {ns_id}

    def with_nat(self, snap: Snapshot, order: list[str], fresh: Mapping[str, FirewallScan], *,
                 everything: bool, moved_ips: set[str], gone: set[str]) -> Snapshot:
        """Re-interpret NAT only where rules changed, or where a forward's target address
        moved or its container went away; at N namespaces most hold no rules at all."""
        present = set(order)
        fresh = {n: scan for n, scan in fresh.items() if n in present}
        if fresh:
            self.fw.update(fresh)
            self.fw_merged = None
        if self.fw_merged is None:
            self.fw_merged = merge_firewall(self.fw[ns_id] for ns_id in order if ns_id in self.fw)
        redo = set(self.fw) if everything else set(fresh)
        if moved_ips or gone:
            redo |= {n for n, v in self.nat.items()
                     if any(p.to_ip in moved_ips or p.container in gone for p in v.port_forwards)}
        for ns_id in redo & self.fw.keys():
            self.nat[ns_id] = nat_view(self.fw[ns_id], snap)
        return with_nat(snap, self.fw_merged, (self.nat[ns_id] for ns_id in order if ns_id in self.nat))


def _put(mapping: dict, key, value: frozenset) -> None:
    if value:
        mapping[key] = value
    else:
        mapping.pop(key, None)


def _veth_targets(ns_id: str, read: NamespaceRead, nsids: Mapping[int, str],
                  only: Collection[int] | None = None) -> frozenset[tuple[int, IfKey]]:
    """(own ifindex, (namespace, ifindex) it points at) for this namespace's veths (`only`
    those links), when known."""
    out = set()
    for link in read.dump.links:
        if link.kind == "veth" and link.link and (only is None or link.ifindex in only):
            far = ns_id if link.link_netnsid is None else nsids.get(link.link_netnsid)
            if far is not None and far != ns_id:
                out.add((link.ifindex, (far, link.link)))
    return frozenset(out)


def _ifindexes(read: NamespaceRead) -> set[int]:
    return {link.ifindex for link in read.dump.links}


def _ips(interfaces: Iterable[Interface]) -> set[str]:
    return {cidr.split("/", 1)[0] for iface in interfaces for cidr in iface.addresses}


class _DumpView(Mapping):
    """{namespace id: RtnlDump} over the cached reads, without copying them all."""

    def __init__(self, reads: Mapping[str, NamespaceRead]):
        self._reads = reads

    def __getitem__(self, ns_id: str):
        return self._reads[ns_id].dump

    def __iter__(self):
        return iter(self._reads)

    def __len__(self) -> int:
        return len(self._reads)
