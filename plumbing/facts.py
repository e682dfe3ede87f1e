"""Gathering the kernel facts a change needs, before it is planned (plan.py is pure).

The only reads of the kernel a change makes before its steps run are here, each in one trip
to the host namespace's thread: its firewall (to choose a backend), its links and routes (is
a bridge's name or subnet free?), the addresses seen on a bridge (which one is free?), who
holds a host port, and what restore must clean up or re-create. Adopting a container reads
only the namespaces its name can lead to (`_named`), not the whole machine.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from typing import TYPE_CHECKING

from bridgescope.collector.model import Namespace, Snapshot, namespace_id
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

if TYPE_CHECKING:
    from bridgescope.collector.kernel.netlink import RtnlDump


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
        return replace(_ports(ns, probe), **_containers(ns, st, snapshot, (request.container,)))
    if isinstance(request, Reconcile):
        if not st.adopted:
            return Facts(probe=probe)
        return Facts(probe=probe, **_containers(ns, st, snapshot, tuple(a.name for a in st.adopted)))
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


def _containers(ns: netns.HostNs, st: State, snapshot: Snapshot | None,
                targets: tuple[str, ...] = ()) -> dict:
    """Every container namespace on a bridge of the host, bar bridgescope's own (adopt.py);
    for `targets`, when their names settle it, only the ones they name (a container gone or
    in a namespace its name no longer leads to needs the whole machine's view)."""
    from bridgescope.collector.kernel import containers
    from bridgescope.collector.kernel.snapshot import collect
    if snapshot is None and targets:
        named = [_named(ns, st, t) for t in targets]
        if all(n is not None for n in named):
            unique = {c.inode: c for n in named for c in n or ()}
            return _not_ours(st, tuple(unique.values()))
    snap = snapshot or collect(ns.path, firewall=False)
    ids, answered = adopt.engine_ids(containers.configured_sockets())
    found, others = adopt.candidates(snap, ids)
    return _not_ours(st, found, others, answered)


def _not_ours(st: State, found: tuple[adopt.Candidate, ...], others: tuple[str, ...] = (),
              answered: frozenset[str] | None = None) -> dict:
    ours = {f"{netns.NETNS_DIR}/{c.netns}" for c in st.containers}
    answered = frozenset(c.engine for c in found if c.engine) if answered is None else answered
    return {"candidates": tuple(c for c in found if not ours & set(c.paths)), "unbridged": others,
            "engines_answered": answered}


# (name, nsfs mounts, pids, the engine's answer) of a namespace a target names
_Named = tuple[str, tuple[str, ...], tuple[int, ...], "adopt.Sighting | None"]


def _named(ns: netns.HostNs, st: State, target: str) -> tuple[adopt.Candidate, ...] | None:
    """The containers on a bridge of the host that `target` can name, read from the engines'
    answer for that one name and from those namespaces alone: the cost of a forward stays the
    same however many containers run. None when that cannot settle it (see `_sightings`; or
    none of them is on a bridge, so that the error names what the machine holds)."""
    from bridgescope.collector.kernel import namespaces
    found = _sightings(st, target)
    host_key = namespaces.ns_key(ns.path)
    if not found or host_key is None:
        return None
    spaces = [Namespace(namespace_id(host_key[1]), ns.name or "host", host_key[1], (ns.path,),
                        is_host=True)]
    spaces += [Namespace(namespace_id(k[1]), name, k[1], paths, pids)
               for k, (name, paths, pids, _) in found.items() if k != host_key]
    ids = {k[1]: (s.engine, s.engine_id) for k, (*_, s) in found.items() if s is not None}
    hits, _ = adopt.candidates(_bridged_view(ns.path, spaces), ids)
    return hits or None


def _bridged_view(host_path: str, spaces: list[Namespace]) -> Snapshot:
    """What adopt.candidates reads of these namespaces (the host first): each container
    namespace's interfaces, and of the host only its veths' peers and their bridges, each
    asked by index (the host's other interfaces grow with the containers it runs)."""
    from bridgescope.collector.kernel.namespaces import open_path
    from bridgescope.collector.kernel.netlink import NamespaceRead, RtnlDump
    from bridgescope.collector.kernel.rtnl import LinkFacts
    from bridgescope.collector.kernel.snapshot import join_parts, namespace_part
    host, parts, peers = spaces[0], [], {}
    host_links: dict[int, LinkFacts] = {}
    for space in spaces[1:]:
        dump, host_nsid = netns.run_in(open_path(space), lambda: _dump_here(host_path))
        veths = [v for v in dump.links if v.kind == "veth" and v.link and v.link_netnsid == host_nsid]
        for link in veths:
            found = netns.run_in(host_path, lambda i=link.link: links.port_and_bridge(i))
            host_links.update({port.ifindex: port for port in found})
            peers[(space.id, link.ifindex)] = (host.id, link.link)
            peers[(host.id, link.link)] = (space.id, link.ifindex)
        parts.append(namespace_part(space, NamespaceRead(dump, ()), peers))
    host_dump = RtnlDump(tuple(host_links.values()), (), ())
    parts.insert(0, namespace_part(host, NamespaceRead(host_dump, ()), peers))
    return join_parts(parts, taken_at=0.0)


def _dump_here(host_path: str) -> tuple[RtnlDump, int | None]:
    """This namespace's links, addresses and routes, and the nsid it gave the host's."""
    from bridgescope.collector.kernel.netlink import NetnsSocket, new_route_socket
    sock = NetnsSocket(new_route_socket())
    fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sock.dump(), next(iter(sock.nsids({"host": fd})), None)
    finally:
        os.close(fd)
        sock.close()


def _sightings(st: State, target: str) -> dict[tuple[int, int], _Named] | None:
    """The namespaces `target` names for the engines (one question each) and as an ip-netns
    name or path. None when only the whole machine can tell: an IP (any namespace may hold
    it), or a namespace whose name discovery takes from elsewhere (an engine's, a process's)."""
    from bridgescope.collector.kernel import containers, namespaces
    if adopt.is_address(target):
        return None
    known = adopt.known(st, target)
    ask = (known.engine_id or known.netns) if known else target
    sockets = containers.configured_sockets()
    found: dict[tuple[int, int], _Named] = {}
    for seen in adopt.engine_lookup(sockets, ask):
        key = next(filter(None, map(namespaces.ns_key, seen.paths)), None)
        if key is not None:
            found[key] = (seen.name, *_mounts_and_pids(seen.paths, key), seen)
    path = ask if "/" in ask else f"{netns.NETNS_DIR}/{ask}"
    key = namespaces.ns_key(path) if namespaces.is_netns(path) else None
    if key is not None and key not in found:
        if os.path.dirname(path) not in namespaces.NETNS_DIRS or key[1] in adopt.engine_ids(sockets)[0]:
            return None
        found[key] = (os.path.basename(path), (path,), (), None)
    return found


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


def _mounts_and_pids(paths: tuple[str, ...], key: tuple[int, int]
                     ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """An engine's paths to a namespace as the collector's discovery spells them: its nsfs
    mounts as mountinfo shows them (the real path: /var/run is a link to /run), and the pids
    of the /proc ones."""
    from bridgescope.collector.kernel import namespaces
    mounts = tuple(dict.fromkeys(os.path.realpath(p) for p in paths if not p.startswith("/proc/")
                                 and namespaces.ns_key(p) == key))
    return mounts, tuple(int(p.split("/")[2]) for p in paths if p.startswith("/proc/"))


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
