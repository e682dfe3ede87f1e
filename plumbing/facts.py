"""Gathering the kernel facts a change needs, before it is planned (plan.py is pure).

The only reads of the kernel a change makes before its steps run are here, each in one trip
to the host namespace's thread: its firewall (to choose a backend), its links and routes (is
a bridge's name or subnet free?), the addresses seen on a bridge (which one is free?), who
holds a host port, and what restore must clean up or re-create.
"""
from __future__ import annotations

import ipaddress
from dataclasses import replace

from bridgescope.collector.model import Snapshot
from bridgescope.plumbing import adopt, backends, conflicts, ipam, journal, links, netns, state
from bridgescope.plumbing.plan import (
    IP_FORWARD,
    AddForwards,
    CreateContainer,
    CreateNetwork,
    Facts,
    Reconcile,
    RemoveForwards,
    Request,
    Restore,
    needs_probe,
)
from bridgescope.plumbing.state import Network, State


def gather(ns: netns.HostNs, st: State, request: Request, *,
           snapshot: Snapshot | None = None) -> Facts:
    """What planning `request` against state `st` needs to know of the kernel. Reads only
    what the request can use; a request the state refuses gets what it has (the plan says
    why it is refused)."""
    probe = backends.probe(ns.path) if needs_probe(st, request) else None
    if isinstance(request, CreateNetwork):
        return _network(ns, st, request.network, probe)
    if isinstance(request, CreateContainer):
        return _container(ns, st, request, probe, snapshot)
    if isinstance(request, AddForwards):
        if st.container(request.container):
            return _ports(ns, probe)
        return replace(_ports(ns, probe), **_containers(ns, st, snapshot))
    if isinstance(request, Reconcile):
        return Facts(probe=probe, **_containers(ns, st, snapshot)) if st.adopted else Facts(probe=probe)
    if isinstance(request, RemoveForwards):
        return Facts(probe=probe)
    if isinstance(request, Restore):
        return restore(ns, st, probe=probe)
    return Facts(probe=probe)


def _network(ns: netns.HostNs, st: State, net: Network, probe: backends.Probe | None) -> Facts:
    if st.network(net.name):
        return Facts(probe=probe)

    def read(ipr):
        return links.index_of(ipr, net.name) is not None, tuple(links.route_destinations(ipr))
    taken, routes = netns.with_netlink(ns.path, read)
    forwarding = netns.read_sysctl(ns.path, IP_FORWARD) if not st.networks else None
    return Facts(probe=probe, ip_forward=forwarding, routes=routes,
                 links=frozenset({net.name} if taken else ()))


def _containers(ns: netns.HostNs, st: State, snapshot: Snapshot | None) -> dict:
    """Every container namespace on a bridge of the host, bar bridgescope's own (adopt.py)."""
    from bridgescope.collector.kernel import containers
    from bridgescope.collector.kernel.snapshot import collect
    snap = snapshot or collect(ns.path, firewall=False)
    found, others = adopt.candidates(snap, adopt.engine_ids(containers.configured_sockets()))
    ours = {f"{netns.NETNS_DIR}/{c.netns}" for c in st.containers}
    return {"candidates": tuple(c for c in found if not ours & set(c.paths)), "unbridged": others}


def _ports(ns: netns.HostNs, probe: backends.Probe | None) -> Facts:
    foreign, listening = conflicts.port_users(ns.key, ns.path)
    return Facts(probe=probe, foreign=tuple(foreign), listeners=tuple(listening))


def _container(ns: netns.HostNs, st: State, req: CreateContainer, probe: backends.Probe | None,
               snapshot: Snapshot | None) -> Facts:
    net = st.network(req.network)
    facts = _ports(ns, probe) if req.mappings and net else Facts(probe=probe)
    if net is None or st.container(req.name):
        return facts
    ctr_ns = ns.container_netns(req.name)
    if netns.exists(ctr_ns):
        return replace(facts, netns=frozenset({ctr_ns}))
    subnet = ipaddress.IPv4Network(net.subnet)

    def read(ipr):
        idx = links.require(ipr, net.name)
        ports = links.port_aliases(idx)  # same thread: same namespace
        foreign_ports = any(not alias.startswith(state.TAG + "ctr/") for alias in ports.values())
        seen = links.local_addresses(ipr) | links.neighbours_on(ipr, net.name)
        return seen, foreign_ports, links.free_veth_name(ipr, ns.key, req.name)
    used, foreign_ports, veth = netns.with_netlink(ns.path, read)
    if snapshot is None and foreign_ports:
        # Something we did not make is plugged into the bridge: ask the whole machine.
        from bridgescope.collector.kernel.snapshot import collect
        snapshot = collect(ns.path, firewall=False)
    if snapshot is not None:
        used |= ipam.addresses_in(snapshot, subnet)
    return replace(facts, used=frozenset(used), veth=veth)


def restore(ns: netns.HostNs, st: State, *, probe: backends.Probe | None = None,
            intent: journal.Intent | None = None) -> Facts:
    """What restore (and recovery from `intent`) must know: our tagged links, our container
    namespaces, and which of the namespaces it may touch exist."""
    tagged = netns.with_netlink(ns.path, links.tagged_links)
    names = {c.netns for c in st.containers} | set(intent.new_netns if intent else ())
    return Facts(probe=probe, tagged=tuple(sorted(tagged.items())),
                 our_netns=tuple(_our_container_netns(ns)),
                 netns=frozenset(n for n in names if netns.exists(n)))


def _our_container_netns(ns: netns.HostNs) -> list[str]:
    prefix = ns.container_netns("")
    if not netns.NETNS_DIR.is_dir():
        return []
    out = []
    for entry in sorted(netns.NETNS_DIR.iterdir()):
        if entry.name.startswith(prefix) and entry.name != ns.name:
            try:
                tags = netns.with_netlink(str(entry), links.tagged_links)
            except OSError:
                continue
            if any(t.startswith("ctr/") for t in tags.values()):
                out.append(entry.name)
    return out
