"""Pairing veth ends across namespaces.

A veth carries IFLA_LINK (the peer's ifindex, local to the PEER's namespace) and
IFLA_LINK_NETNSID (the peer namespace's nsid as the observer numbers it). Ifindexes and
names collide across namespaces (every container has eth0 = 2), so the nsid is resolved by
asking the observer's own socket RTM_GETNSID for each candidate namespace fd. Only the
final step, `pair`, decides; it is pure.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from bridgescope.collector.kernel.netlink import RtnlDump

IfKey = tuple[str, int]  # (namespace id, ifindex)


class NsidSource(Protocol):
    def nsids(self, candidates: Mapping[str, int]) -> dict[int, str]: ...


def wanted_nsids(dump: RtnlDump) -> set[int]:
    return {link.link_netnsid for link in dump.links if link.link_netnsid is not None}


def likely_homes(dumps: Mapping[str, RtnlDump]) -> dict[tuple[int, int], list[str]]:
    """(ifindex, link) -> namespaces holding such a veth: the far end of a pair points back."""
    index: dict[tuple[int, int], list[str]] = {}
    for ns_id, dump in dumps.items():
        for link in dump.links:
            if link.kind == "veth" and link.link:
                index.setdefault((link.ifindex, link.link), []).append(ns_id)
    return index


def resolve_nsids(ns_id: str, dump: RtnlDump, sock: NsidSource, fds: Mapping[str, int],
                  homes: Mapping[tuple[int, int], list[str]]) -> dict[int, str]:
    """{nsid -> namespace id} for the nsids this namespace's veths mention.

    Candidates whose veth points back at ours are asked first (usually one question per
    nsid); whatever is left is resolved by asking about every other namespace at once.
    """
    wanted = wanted_nsids(dump)
    if not wanted:
        return {}
    guesses: dict[str, int] = {}
    for link in dump.links:
        if link.link_netnsid is not None and link.link:
            for other in homes.get((link.link, link.ifindex), ()):
                if other != ns_id and other in fds:
                    guesses[other] = fds[other]
    found = {n: ns for n, ns in sock.nsids(guesses).items() if n in wanted} if guesses else {}
    if wanted - set(found):
        rest = {other: fd for other, fd in fds.items() if other not in guesses and other != ns_id}
        found.update({n: ns for n, ns in sock.nsids(rest).items() if n in wanted and n not in found})
    return found


def pair(dumps: Mapping[str, RtnlDump], nsid_maps: Mapping[str, Mapping[int, str]],
         only: Iterable[str] | None = None, links: Mapping[str, Collection[int]] | None = None
         ) -> dict[IfKey, IfKey]:
    """(namespace, ifindex) of each veth -> its peer's, when the peer's namespace is known.

    `only` limits the work to those namespaces' veths, `links` ({namespace: ifindexes}) to
    those links of theirs (the watcher's incremental path).
    """
    ifindexes: dict[str, set[int]] = {}

    def present(ns_id: str, ifindex: int) -> bool:
        if ns_id not in ifindexes:
            dump = dumps.get(ns_id)
            ifindexes[ns_id] = {link.ifindex for link in dump.links} if dump else set()
        return ifindex in ifindexes[ns_id]

    peers: dict[IfKey, IfKey] = {}
    for ns_id in (dumps if only is None else [n for n in only if n in dumps]):
        wanted = links.get(ns_id) if links is not None else None
        for link in dumps[ns_id].links:
            if link.kind != "veth" or not link.link or (wanted is not None and link.ifindex not in wanted):
                continue
            if link.link_netnsid is None:
                far_ns = ns_id
            else:
                far_ns = nsid_maps.get(ns_id, {}).get(link.link_netnsid)
            if far_ns is not None and present(far_ns, link.link):
                peers[(ns_id, link.ifindex)] = (far_ns, link.link)
    return peers
