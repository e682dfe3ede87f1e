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

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridgescope.collector.firewall import FirewallScan
from bridgescope.collector.kernel.netlink import NamespaceRead
from bridgescope.collector.kernel.snapshot import (
    NamespacePart,
    join_parts,
    merge_firewall,
    namespace_part,
    nat_view,
    with_nat,
)
from bridgescope.collector.kernel.veth import IfKey, pair, wanted_nsids
from bridgescope.collector.model import Namespace, Snapshot
from bridgescope.collector.render.graph import diff_elements, patch_elements, to_elements
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
class Picture:
    """What the live view shows, and the per-namespace pieces it was assembled from."""
    firewall: bool = True
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    reads: Mapping[str, NamespaceRead] = field(default_factory=dict)
    nsids: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    parts: Mapping[str, NamespacePart] = field(default_factory=dict)
    targets: Mapping[str, frozenset[IfKey]] = field(default_factory=dict)  # links a namespace's veths point at
    pointing: Mapping[str, frozenset[str]] = field(default_factory=dict)  # namespace -> whose veths point into it
    fw: Mapping[str, FirewallScan] = field(default_factory=dict)
    fw_merged: FirewallScan | None = None  # every namespace's rules in one scan; None: to merge again
    nat: Mapping[str, NatView] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    snapshot: Snapshot = Snapshot()
    elements: list[dict] = field(default_factory=list)


def needs_nsids(picture: Picture, reads: Mapping[str, NamespaceRead], *, everything: bool = False,
                new_namespaces: bool = False) -> list[str]:
    """Namespaces whose veths name an nsid not yet resolved: the edge asks the kernel for those.

    When namespaces appeared, older reads that named an unknown nsid may now resolve too.
    """
    merged = {**picture.reads, **reads}
    scope = merged if everything or new_namespaces else reads
    return [ns_id for ns_id in scope
            if everything or not wanted_nsids(merged[ns_id].dump) <= set(picture.nsids.get(ns_id, {}))]


def advance(picture: Picture, reads: Reads) -> tuple[Picture, dict]:
    """The next picture and the delta that turns the previous elements into its elements."""
    namespaces = dict(picture.namespaces if reads.namespaces is None else reads.namespaces)
    store = _Store(picture)
    dirty: set[str] = set()
    gone = picture.namespaces.keys() - namespaces.keys()
    for ns_id in gone:
        dirty |= store.forget(ns_id)
    dirty |= {n for n, ns in namespaces.items() if n in picture.namespaces and ns != picture.namespaces[n]}
    for ns_id, read in reads.dumps.items():
        if ns_id in namespaces:
            dirty |= store.take_read(ns_id, read)
    if reads.full:
        store.nsids = {}
    store.nsids.update(reads.nsids)
    everything = reads.full or not picture.elements
    present = namespaces.keys() & store.reads.keys()
    namespaces = {n: ns for n, ns in namespaces.items() if n in present}
    affected = set(present) if everything else (dirty | (present - store.parts.keys())) & present
    moved_ips = store.rebuild_parts(namespaces, affected)
    order = sorted(namespaces.values(), key=lambda ns: (not ns.is_host, ns.inode))
    warnings = picture.warnings if reads.warnings is None else reads.warnings
    snap = join_parts((store.parts[ns.id] for ns in order), taken_at=reads.taken_at, warnings=warnings)
    if picture.firewall:
        snap = store.with_nat(snap, order, reads.firewall, everything=everything,
                              moved_ips=moved_ips, gone=gone)
    relayout = everything or namespaces.keys() != picture.namespaces.keys()
    elements, delta = _elements(picture.elements, snap, affected, relayout)
    return Picture(firewall=picture.firewall, namespaces=namespaces, reads=store.reads, nsids=store.nsids,
                   parts=store.parts, targets=store.targets, pointing=store.pointing, fw=store.fw,
                   fw_merged=store.fw_merged, nat=store.nat, warnings=warnings, snapshot=snap,
                   elements=elements), delta


def _elements(old: list[dict], snap: Snapshot, affected: set[str], relayout: bool) -> tuple[list[dict], dict]:
    patched = None if relayout or not old else patch_elements(old, snap, affected)
    if patched is not None:
        return patched
    new = to_elements(snap)
    return new, diff_elements(old, new)


class _Store:
    """The picture's mappings, copied once per round and updated in place (never shared)."""

    def __init__(self, picture: Picture):
        self.reads = dict(picture.reads)
        self.nsids = {k: dict(v) for k, v in picture.nsids.items()}
        self.parts = dict(picture.parts)
        self.targets = dict(picture.targets)
        self.pointing = dict(picture.pointing)
        self.fw = dict(picture.fw)
        self.fw_merged = picture.fw_merged
        self.nat = dict(picture.nat)

    def forget(self, ns_id: str) -> set[str]:
        """Drop a namespace that went; returns the namespaces whose veths lost their peer."""
        lost_peer = set(self.pointing.pop(ns_id, frozenset()))
        self._point(ns_id, frozenset())
        for mapping in (self.reads, self.nsids, self.parts, self.nat):
            mapping.pop(ns_id, None)
        if self.fw.pop(ns_id, None) is not None:
            self.fw_merged = None
        for mapping in self.nsids.values():
            for nsid in [k for k, v in mapping.items() if v == ns_id]:
                del mapping[nsid]
        return lost_peer

    def take_read(self, ns_id: str, read: NamespaceRead) -> set[str]:
        """Keep a fresh read; returns the namespaces to rebuild because of it."""
        before = self.reads.get(ns_id)
        if read == before:
            return set()
        self.reads[ns_id] = read
        came_or_went = _ifindexes(read) ^ (_ifindexes(before) if before is not None else set())
        # veths elsewhere that point at a link that came or went must be paired again
        return {ns_id} | {other for other in self.pointing.get(ns_id, ())
                          if any((ns_id, i) in self.targets.get(other, ()) for i in came_or_went)}

    def rebuild_parts(self, namespaces: Mapping[str, Namespace], affected: set[str]) -> set[str]:
        """Rebuild the affected namespaces' parts; returns the addresses that appeared or went."""
        peers = pair(_DumpView(self.reads), self.nsids, only=affected)
        moved: set[str] = set()
        for ns_id in affected:
            before = self.parts.get(ns_id)
            part = namespace_part(namespaces[ns_id], self.reads[ns_id], peers)
            self.parts[ns_id] = part
            moved |= _ips(before) ^ _ips(part)
            self._point(ns_id, _veth_targets(ns_id, self.reads[ns_id], self.nsids.get(ns_id, {})))
        return moved

    def _point(self, ns_id: str, targets: frozenset[IfKey]) -> None:
        before = {far for far, _ in self.targets.get(ns_id, ())}
        after = {far for far, _ in targets}
        if targets:
            self.targets[ns_id] = targets
        else:
            self.targets.pop(ns_id, None)
        for far in before - after:
            rest = self.pointing.get(far, frozenset()) - {ns_id}
            if rest:
                self.pointing[far] = rest
            else:
                self.pointing.pop(far, None)
        for far in after - before:
            self.pointing[far] = self.pointing.get(far, frozenset()) | {ns_id}

    def with_nat(self, snap: Snapshot, order: list[Namespace], fresh: Mapping[str, FirewallScan], *,
                 everything: bool, moved_ips: set[str], gone: set[str]) -> Snapshot:
        """Re-interpret NAT only where rules changed, or where a forward's target address
        moved or its container went away; at N namespaces most hold no rules at all."""
        present = {ns.id for ns in order}
        fresh = {n: scan for n, scan in fresh.items() if n in present}
        if fresh:
            self.fw.update(fresh)
            self.fw_merged = None
        if self.fw_merged is None:
            self.fw_merged = merge_firewall(self.fw[ns.id] for ns in order if ns.id in self.fw)
        redo = set(self.fw) if everything else set(fresh)
        if moved_ips or gone:
            redo |= {n for n, v in self.nat.items()
                     if any(p.to_ip in moved_ips or p.container in gone for p in v.port_forwards)}
        for ns_id in redo & self.fw.keys():
            self.nat[ns_id] = nat_view(self.fw[ns_id], snap)
        return with_nat(snap, self.fw_merged, (self.nat[ns.id] for ns in order if ns.id in self.nat))


def _veth_targets(ns_id: str, read: NamespaceRead, nsids: Mapping[int, str]) -> frozenset[IfKey]:
    """(namespace, ifindex) of every link this namespace's veths point at, when known."""
    out = set()
    for link in read.dump.links:
        if link.kind == "veth" and link.link:
            far = ns_id if link.link_netnsid is None else nsids.get(link.link_netnsid)
            if far is not None and far != ns_id:
                out.add((far, link.link))
    return frozenset(out)


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
