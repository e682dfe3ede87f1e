"""One scan of the machine -> one frozen Snapshot.

discovery -> per-namespace dumps (sockets opened once, one setns pass) -> veth pairing ->
firewall.scan -> nat.interpret. The kernel reads live in `netlink.open_handles` and
`read_firewall`; turning what was read into model objects (`assemble`) is pure.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridgescope.collector import firewall as firewall_reader
from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.firewall.readers import has_tables_here
from bridgescope.collector.kernel.namespaces import discover, open_path, resolve_netns
from bridgescope.collector.kernel.netlink import NamespaceHandle, NamespaceRead, open_handles
from bridgescope.collector.kernel.veth import IfKey, likely_homes, pair, resolve_nsids
from bridgescope.collector.model import Interface, Namespace, Route, Snapshot, interface_id

if TYPE_CHECKING:
    from bridgescope.collector.rules import nat


def collect(host: str | None = None, *, firewall: bool = True) -> Snapshot:
    """Scan every namespace on the machine; `host` (netns name or path) is treated as the host."""
    ref = resolve_netns(host)
    taken_at = time.time()
    return scan(discover(ref), firewall=firewall, taken_at=taken_at)


def scan(namespaces: list[Namespace], *, firewall: bool = True, taken_at: float | None = None) -> Snapshot:
    """Read the given (already discovered) namespaces; ones that vanished become warnings."""
    taken_at = time.time() if taken_at is None else taken_at
    # Whether each namespace has firewall tables is asked on the same visit as its dump: a
    # container's namespace usually has none, and then the firewall reader need not enter it.
    handles, reads, failures = open_handles({ns.id: path_or_blank(ns) for ns in namespaces},
                                            probe=has_tables_here if firewall else None)
    try:
        nsid_maps = resolve_all_nsids(handles, reads)
        present = [ns for ns in namespaces if ns.id in reads]
        snap = assemble(present, reads, nsid_maps, taken_at=taken_at,
                        warnings=vanished_warnings(namespaces, failures))
        if firewall:
            bare = {ns_id for ns_id, read in reads.items() if read.has_tables is False}
            snap = with_firewall(snap, read_firewall({ns_id: h.proc_path for ns_id, h in handles.items()},
                                                     bare=bare))
        return snap
    finally:
        for handle in handles.values():
            handle.close()


def path_or_blank(ns: Namespace) -> str:
    """Where to open ns; "" when nothing holds it any more (the open then fails as vanished)."""
    try:
        return open_path(ns)
    except BridgescopeError:
        return ""  # fails to open -> reported as vanished


def resolve_all_nsids(handles: Mapping[str, NamespaceHandle], reads: Mapping[str, NamespaceRead]
                      ) -> dict[str, dict[int, str]]:
    dumps = {ns_id: r.dump for ns_id, r in reads.items()}
    homes = likely_homes(dumps)
    fds = {ns_id: h.fd for ns_id, h in handles.items()}
    maps = {}
    for ns_id, handle in handles.items():
        try:
            maps[ns_id] = resolve_nsids(ns_id, dumps[ns_id], handle.rtnl, fds, homes)
        except OSError:
            maps[ns_id] = {}
    return maps


def vanished_warnings(namespaces: Iterable[Namespace], failures: Mapping[str, OSError]) -> tuple[str, ...]:
    return tuple(
        f"namespace {ns.name} ({ns.id}) vanished or could not be entered during the scan "
        f"({failures[ns.id].strerror or failures[ns.id]}); left out"
        for ns in namespaces if ns.id in failures
    )


@dataclass(frozen=True)
class NamespacePart:
    """One namespace's share of a snapshot; the watcher rebuilds only the parts that changed."""
    namespace: Namespace
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]


def assemble(namespaces: list[Namespace], reads: Mapping[str, NamespaceRead],
             nsid_maps: Mapping[str, Mapping[int, str]], *, taken_at: float,
             warnings: tuple[str, ...] = ()) -> Snapshot:
    """Pure: what was read per namespace -> the model."""
    peers = pair({ns_id: r.dump for ns_id, r in reads.items()}, nsid_maps)
    parts = [namespace_part(ns, reads[ns.id], peers) for ns in namespaces]
    return join_parts(parts, taken_at=taken_at, warnings=warnings)


def namespace_part(ns: Namespace, read: NamespaceRead, peers: Mapping[IfKey, IfKey]) -> NamespacePart:
    return NamespacePart(
        namespace=dataclasses.replace(ns, sysctls=read.sysctls),
        interfaces=tuple(namespace_interfaces(ns.id, read, peers)),
        routes=tuple(namespace_routes(ns.id, read)),
    )


def join_parts(parts: Iterable[NamespacePart], *, taken_at: float, warnings: tuple[str, ...] = ()) -> Snapshot:
    parts = list(parts)
    return Snapshot(
        namespaces=tuple(p.namespace for p in parts),
        interfaces=tuple(itertools.chain.from_iterable(p.interfaces for p in parts)),
        routes=tuple(itertools.chain.from_iterable(p.routes for p in parts)),
        warnings=warnings,
        taken_at=taken_at,
        host=next((p.namespace.id for p in parts if p.namespace.is_host), None),
    )


def namespace_interfaces(ns_id: str, read: NamespaceRead, peers: Mapping[IfKey, IfKey],
                         only: Collection[int] | None = None) -> list[Interface]:
    """The namespace's interfaces by ifindex; `only` those ifindexes (the watcher's path)."""
    addresses: dict[int, list[str]] = {}
    for addr in read.dump.addresses:
        if only is None or addr.ifindex in only:  # a host's thousand veths: a thousand link-local addresses
            addresses.setdefault(addr.ifindex, []).append(addr.cidr)
    out = []
    links = read.dump.links if only is None else [link for link in read.dump.links if link.ifindex in only]
    for link in sorted(links, key=lambda l: l.ifindex):
        peer = peers.get((ns_id, link.ifindex))
        out.append(Interface(
            id=interface_id(ns_id, link.ifindex),
            netns=ns_id,
            name=link.name,
            ifindex=link.ifindex,
            kind=link.kind,
            state="up" if link.up else "down",
            mtu=link.mtu,
            mac=link.mac,
            addresses=tuple(addresses.get(link.ifindex, ())),
            master=interface_id(ns_id, link.master) if link.master else None,
            peer=interface_id(*peer) if peer else None,
            alias=link.alias,
            operstate=link.operstate,
            hairpin=link.hairpin,
        ))
    return out


def namespace_routes(ns_id: str, read: NamespaceRead) -> list[Route]:
    names = {link.ifindex: link.name for link in read.dump.links}
    return [
        Route(netns=ns_id, dst=r.dst, gateway=r.gateway, dev=names.get(r.oif) if r.oif else None,
              dev_id=interface_id(ns_id, r.oif) if r.oif in names else None, family=r.family,
              scope=r.scope, proto=r.proto, prefsrc=r.prefsrc)
        for r in read.dump.routes
    ]


def read_firewall(paths: Mapping[str, str], *, reuse: bool = False, bare: Collection[str] = ()
                  ) -> firewall_reader.FirewallScan:
    """Every backend's rules in the given namespaces (`bare` ones known to have no table);
    a failure becomes a warning."""
    try:
        return firewall_reader.scan(paths, reuse=reuse, bare=bare)
    except (OSError, BridgescopeError) as err:
        return firewall_reader.FirewallScan(warnings=(f"firewall could not be read: {err}",))


def merge_firewall(scans: Iterable[firewall_reader.FirewallScan]) -> firewall_reader.FirewallScan:
    scans = list(scans)
    return firewall_reader.FirewallScan(
        rules=tuple(r for s in scans for r in s.rules),
        chains=tuple(c for s in scans for c in s.chains),
        warnings=tuple(w for s in scans for w in s.warnings),
        proxies=tuple(p for s in scans for p in s.proxies),
    )


def with_firewall(snap: Snapshot, fw: firewall_reader.FirewallScan) -> Snapshot:
    """Pure: add rules and chains, and the forwards/masquerades they amount to."""
    if not fw.rules and not fw.proxies:
        return with_nat(snap, fw, ())  # nothing to interpret: the rule engine is not even imported
    return with_nat(snap, fw, [nat_view(fw, snap)])


def nat_view(fw: firewall_reader.FirewallScan, snap: Snapshot) -> nat.NatView:
    """Forwards and masquerades the rules amount to, resolved against the snapshot's interfaces."""
    from bridgescope.collector.rules import nat

    if not fw.rules and not fw.proxies:
        return nat.NatView()
    return nat.interpret(fw.rules, fw.chains, snap.interfaces, snap.namespaces, proxies=fw.proxies)


def with_nat(snap: Snapshot, fw: firewall_reader.FirewallScan, views: Iterable[nat.NatView]) -> Snapshot:
    views = list(views)
    return dataclasses.replace(
        snap,
        rules=fw.rules,
        chains=fw.chains,
        port_forwards=tuple(p for v in views for p in v.port_forwards),
        masquerades=tuple(m for v in views for m in v.masquerades),
        warnings=snap.warnings + fw.warnings + tuple(w for v in views for w in v.warnings),
    )

