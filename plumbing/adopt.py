"""Adopting a container bridgescope did not make: find it, decide whether our forward can carry
traffic past its engine's own filtering, and follow it when it restarts (docs/adopt.md).

Pure, except `engine_ids` and `engine_lookup`, which facts.py calls to read the machine.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import quote

from bridgescope.collector.model import Snapshot
from bridgescope.plumbing.backends import Probe
from bridgescope.plumbing.errors import UnknownContainer, ValidationError
from bridgescope.plumbing.state import Adopted, State

DOCKER_USER = "DOCKER-USER"
BRIDGE_ACCEPT_FWMARK = "--bridge-accept-fwmark"
_DOCKER_CHAIN = re.compile(r"^:DOCKER(\s|-)", re.M)
_FORWARD_DROP = re.compile(r"^:FORWARD DROP", re.M)


@dataclass(frozen=True)
class Candidate:
    """A container namespace plugged into a bridge of the served host, as found now."""
    name: str  # the engine's name, or the namespace's
    ip: str
    bridge: str
    netns: str  # one path of the namespace ("" when only a process holds it)
    inode: int
    paths: tuple[str, ...] = ()
    engine: str = ""
    engine_id: str = ""

    def adopted(self, user_chain: str) -> Adopted:
        return Adopted(self.name, self.ip, self.bridge, self.netns, self.inode, self.engine,
                       self.engine_id, user_chain)


# --- reading the machine ---------------------------------------------------------------

def engine_ids(sockets: Iterable[str]) -> tuple[dict[int, tuple[str, str]], frozenset[str]]:
    """{namespace inode: (engine, container id)} from every engine socket that answers, and
    the kinds of engine that answered (a container is gone only when its own engine says so:
    a daemon that is restarting answers nothing). The collector's inspection cache makes this
    one listing per socket once containers are known."""
    from bridgescope.collector.kernel import containers
    out: dict[int, tuple[str, str]] = {}
    answered: set[str] = set()
    for sock in sockets:
        try:
            listing = containers.engine_get(sock, "/containers/json")
        except (OSError, ValueError):
            continue
        engine = _engine_kind(sock)
        answered.add(engine)
        for summary in listing if isinstance(listing, list) else ():
            cid = summary.get("Id") if isinstance(summary, dict) else None
            if isinstance(cid, str):
                for _, ino in containers.namespace_keys(sock, cid):
                    out[ino] = (engine, cid)
    return out, frozenset(answered)


@dataclass(frozen=True)
class Sighting:
    """A running container an engine knows by the name or id a request gave."""
    engine: str
    engine_id: str
    name: str
    paths: tuple[str, ...]  # where its network namespace opens (SandboxKey, /proc/PID/ns/net)


def engine_lookup(sockets: Iterable[str], target: str) -> list[Sighting]:
    """The running container each engine answers to `target` with (one inspection per
    socket, whatever the number of containers): an engine also accepts an id prefix shorter
    than `_answers_to` does, so its answer is held to the same rule."""
    from bridgescope.collector.kernel import containers
    out = []
    for sock in sockets:
        if not os.path.exists(sock):
            continue
        try:
            detail = containers.engine_get(sock, f"/containers/{quote(target, safe='')}/json")
        except (OSError, ValueError):
            continue
        if not isinstance(detail, dict) or not (detail.get("State") or {}).get("Running"):
            continue
        cid, name = detail.get("Id"), str(detail.get("Name") or "").lstrip("/")
        if not isinstance(cid, str) or not _engine_answers(cid, name, target):
            continue
        out.append(Sighting(_engine_kind(sock), cid, name, tuple(containers.namespace_paths(detail))))
    return out


def _engine_answers(cid: str, name: str, target: str) -> bool:
    """A name, a whole id or an id prefix of 12 or more (an id of "": no engine's)."""
    return bool(target) and (target in (cid, name) or (len(target) >= 12 and cid.startswith(target)))


_kinds: dict[tuple[str, int], str] = {}


def _engine_kind(sock: str) -> str:
    """docker or podman: asked once per socket file (a restarted daemon makes a new one)."""
    from bridgescope.collector.kernel import containers
    try:
        key = (sock, os.stat(sock).st_ino)
        if key not in _kinds:
            version = containers.engine_get(sock, "/version")
            _kinds[key] = "podman" if "podman" in str(version).lower() else "docker"
    except (OSError, ValueError):
        return "docker"
    return _kinds[key]


def is_address(target: str) -> bool:
    try:
        ipaddress.ip_address(target)
    except ValueError:
        return False
    return True


def candidates(snap: Snapshot, ids: Mapping[int, tuple[str, str]]
               ) -> tuple[tuple[Candidate, ...], tuple[str, ...]]:
    """Pure: (every container namespace on a bridge of the snapshot's host, the names of the
    other namespaces, which are on no bridge of it)."""
    by_id = {i.id: i for i in snap.interfaces}
    veths: dict[str, list] = {}  # by namespace: one pass, not one per namespace
    for i in snap.interfaces:
        if i.kind == "veth":
            veths.setdefault(i.netns, []).append(i)
    found: list[Candidate] = []
    for ns in snap.namespaces:
        if ns.is_host:
            continue
        for inside in veths.get(ns.id, ()):
            outside = by_id.get(inside.peer or "")
            bridge = by_id.get(outside.master or "") if outside else None
            ip = next((a.split("/")[0] for a in inside.addresses if "." in a), None)
            if bridge is None or bridge.netns != snap.host or ip is None:
                continue
            engine, cid = ids.get(ns.inode, ("", ""))
            found.append(Candidate(ns.name, ip, bridge.name, ns.paths[0] if ns.paths else "",
                                   ns.inode, ns.paths, engine, cid))
    on_bridge = {c.inode for c in found}
    others = tuple(ns.name for ns in snap.namespaces if not ns.is_host and ns.inode not in on_bridge)
    return tuple(found), others


# --- choosing the container --------------------------------------------------------------

def _answers_to(c: Candidate, target: str) -> bool:
    return (target == c.ip or target in c.paths
            or any(p.rsplit("/", 1)[-1] == target for p in c.paths)
            or _engine_answers(c.engine_id, c.name, target))


def resolve(target: str, found: Iterable[Candidate], unbridged: Iterable[str]) -> Candidate:
    """The one container `target` names (engine name or id, namespace name or path, or its
    IP), or a ValidationError saying why none or which ones."""
    hits = [c for c in found if _answers_to(c, target)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        which = ", ".join(f"{c.name} ({c.ip} on {c.bridge})" for c in hits)
        raise ValidationError("container", f"{target} matches more than one container here: "
                                           f"{which}; name one of them")
    if target in unbridged:
        raise ValidationError("container", f"namespace {target} is attached to no bridge of this "
                                           "host: a port forward needs a container on a bridge")
    raise UnknownContainer(f"no container named {target} (engine name or id, namespace or IP) "
                           "is on a bridge of this host")


def known(st: State, target: str):
    """The adopted container `target` names, from the state alone (forward rm, doctor)."""
    for a in st.adopted:
        if target in (a.name, a.ip, a.engine_id, a.netns) or a.netns.rsplit("/", 1)[-1] == target \
                or (len(target) >= 12 and a.engine_id.startswith(target)):
            return a
    return None


def follow(a: Adopted, found: Iterable[Candidate]) -> Candidate | None:
    """Where an adopted container is now: the same engine id, else (no engine) the same
    namespace path, else the same name. None: it is gone."""
    found = tuple(found)
    if a.engine_id:
        return next((c for c in found if c.engine_id == a.engine_id), None)
    return (next((c for c in found if a.netns and a.netns in c.paths), None)
            or next((c for c in found if c.name == a.name and not c.engine_id), None))


def moved(a: Adopted, c: Candidate) -> Adopted:
    return replace(a, ip=c.ip, bridge=c.bridge, netns=c.netns, inode=c.inode)


# --- can our forward carry traffic here? ---------------------------------------------------

def user_chain(probe: Probe, backend: str) -> str:
    """Pure: the engine's documented chain for users' rules that our forward must jump from
    ("" when none is needed), or a ValidationError saying why the forward could not work and
    which daemon option would make it possible."""
    if "ip docker-bridges" in probe.nft_tables:
        raise ValidationError(
            "container", "Docker's nftables firewall (table ip docker-bridges) drops forwarded "
            "packets to ports it did not publish, and an accept in another table is not final: "
            f"start dockerd with {BRIDGE_ACCEPT_FWMARK}=0x1000000 (and firewall-backend nftables) "
            "for a supported way in, or publish the port with Docker; nothing was changed")
    save = probe.legacy_save if backend == "legacy" else probe.nft_save
    if backend == "nftables" and (_DOCKER_CHAIN.search(probe.nft_save + probe.legacy_save)
                                  or _FORWARD_DROP.search(probe.nft_save + probe.legacy_save)):
        raise ValidationError(
            "container", "bridgescope's rules here live in its own nftables table, where an "
            "accept is not final: the engine's iptables FORWARD filtering would still drop the "
            "forward; nothing was changed")
    if f":{DOCKER_USER} " in save:
        return DOCKER_USER
    if _DOCKER_CHAIN.search(save):
        raise ValidationError(
            "container", f"Docker's iptables chains are here without its {DOCKER_USER} chain, "
            "the one place Docker keeps users' rules across its restarts; nothing was changed")
    return ""
