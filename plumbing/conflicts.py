"""Is a host port free? Already forwarded (by us, Docker, CNI, Podman...) or listened on.

The reads are at the edge (the host's firewall through the collector's scan/interpret, and
the host namespace's listening sockets through kernel.listeners); deciding is a pure function.
"""
from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from bridgescope.collector import firewall as firewall_reader
from bridgescope.collector.firewall import nftinfo, owners, readers
from bridgescope.collector.firewall.savefmt import parse_save
from bridgescope.collector.kernel.listeners import Listener, read_here, read_one
from bridgescope.collector.model import PortForward
from bridgescope.collector.rules import nat
from bridgescope.plumbing import netns, state
from bridgescope.plumbing.state import Forward, State


def _overlaps(ip_a: str | None, ip_b: str | None) -> bool:
    """Two bindings collide when either is 'any address' or both name the same address."""
    return ip_a is None or ip_b is None or ip_a == ip_b


def find_conflict(m: Forward, ours: Iterable[Forward], foreign: Iterable[PortForward],
                  listeners: Iterable[Listener]) -> str | None:
    return find_conflicts((m,), ours, foreign, listeners)


def find_conflicts(mappings: Iterable[Forward], ours: Iterable[Forward],
                   foreign: Iterable[PortForward], listeners: Iterable[Listener]) -> str | None:
    """The first mapping whose host port someone already holds, and who: linear, since the
    holders are indexed by (proto, port) once instead of scanned for every mapping."""
    ours_at: dict[tuple[str, int], list[Forward]] = {}
    for f in ours:
        ours_at.setdefault((f.proto, f.host_port), []).append(f)
    foreign_at: dict[tuple[str, int], list[PortForward]] = {}
    ranges: list[PortForward] = []  # few; a range is one rule however many ports it spans
    for pf in foreign:
        if pf.owner == "bridgescope":
            continue
        if pf.host_port_end and pf.host_port_end != pf.host_port:
            ranges.append(pf)
        else:
            foreign_at.setdefault((pf.proto, pf.host_port), []).append(pf)
    listen_at: dict[tuple[str, int], list[Listener]] = {}
    for ls in listeners:
        listen_at.setdefault((ls.proto, ls.port), []).append(ls)
    for m in mappings:
        at = (m.proto, m.host_port)
        for f in ours_at.get(at, ()):
            if _overlaps(f.host_ip, m.host_ip):
                return (f"host port {m.host_port}/{m.proto} is already forwarded to container "
                        f"{f.container} port {f.container_port} by bridgescope")
        for pf in foreign_at.get(at, []) + [r for r in ranges if r.proto == m.proto and
                                            r.host_port <= m.host_port <= r.host_port_end]:
            if _overlaps(pf.host_ip, m.host_ip):
                return (f"host port {m.host_port}/{m.proto} is already forwarded to "
                        f"{pf.to_ip}:{pf.to_port} by {pf.owner}")
        for ls in listen_at.get(at, ()):
            if ls.holds(m.proto, m.host_ip, m.host_port):
                return (f"host port {m.host_port}/{m.proto} is already in use by a program "
                        f"listening on {ls.address}:{ls.port} in the host namespace")
    return None


def listeners(path: str) -> list[Listener]:
    return _in_order(read_one(path))


def _in_order(found: Iterable[Listener]) -> list[Listener]:
    """By protocol, port and address: the first conflict named is the same on every read."""
    return sorted(found, key=lambda ls: (ls.proto, ls.port, ls.address))


def _cache_path(key: str) -> Path:
    return state.state_dir() / f".{key}.foreign.json"


# The last few states digested, by identity (a change digests its before and after states,
# and the next check in the same process the very same after state): id -> (state, digest).
_digests: dict[int, tuple[State, int]] = {}


def owned_digest(st: State) -> int:
    """The forwards a state owns, as one number: the cache was read against one state, and
    another (a crash between the kernel change and the state save, a state file put back from
    elsewhere) may make some of our rules orphans, so it must miss."""
    known = _digests.get(id(st))
    if known and known[0] is st:
        return known[1]
    crc = zlib.crc32("\n".join(f"{f.container} {f.key}" for f in st.forwards).encode())
    digest = len(st.forwards) << 32 | crc
    if len(_digests) >= 4:
        _digests.pop(next(iter(_digests)))
    _digests[id(st)] = (st, digest)
    return digest


def _read_cache(key: str) -> tuple[tuple[int, int] | None, tuple[PortForward, ...]]:
    try:
        data = json.loads(_cache_path(key).read_text(encoding="utf-8"))
        return ((data["generation"], data["owned"]),
                tuple(PortForward(**pf) for pf in data["forwards"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None, ()


def _write_cache(key: str, stamp: tuple[int, int], forwards: Sequence[PortForward]) -> None:
    # Written in place, not renamed: a torn read only means a cache miss (a full re-read),
    # and skipping the rename saves a journal commit on every forward change.
    path = _cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps({"generation": stamp[0], "owned": stamp[1],
                                "forwards": [asdict(f) for f in forwards]}), encoding="utf-8")


_FWD_TAG = re.compile(re.escape(state.TAG) + r'(fwd/[^"\s]+)')


def _not_ours(forwards: Iterable[PortForward]) -> tuple[PortForward, ...]:
    return tuple(pf for pf in forwards if pf.owner != "bridgescope")


def _orphaned(forwards: Iterable[PortForward], owned: frozenset[str]) -> tuple[PortForward, ...]:
    """Our tagged forwards that no saved state owns (left by a crash the journal could not
    repair, or a state file put back from elsewhere): they still forward traffic, so they hold
    their port like anybody else's rule. Their owner names the rule and the way out."""
    out = []
    for pf in forwards:
        m = _FWD_TAG.search(pf.rule_text or "") if pf.owner == "bridgescope" else None
        if m and m.group(1) not in owned:
            out.append(replace(pf, owner=f"an orphaned bridgescope rule ({state.TAG}{m.group(1)}) "
                                         "that no saved state owns; `bridgescope restore` "
                                         "removes it"))
    return tuple(out)


def _owned_forward_tags(key: str) -> frozenset[str]:
    return frozenset(f.tag for f in state.load(key).forwards)


def forget_cache(key: str) -> None:
    """After a rewrite of our chains (restore, recovery): orphans it removed must not linger."""
    _cache_path(key).unlink(missing_ok=True)


def port_users(key: str, path: str) -> tuple[tuple[PortForward, ...], list[Listener]]:
    """(forwards not in our saved state, listeners) of the host namespace, read in one trip to
    its thread: other tools' forwards and our own orphaned ones."""
    generation, legacy_present, socks = netns.run_in(path, lambda: (
        nftinfo.generation_here(), 4 in readers.legacy_here(),
        _in_order(read_here())))
    return _foreign(key, path, generation, legacy_present), socks


def _foreign(key: str, path: str, generation: int, legacy_present: bool
             ) -> tuple[PortForward, ...]:
    """Port forwards in the host namespace's firewall that some other tool made, or that
    are ours but no saved state owns.

    The nf_tables part is read through the collector's firewall scan and remembered with the
    nft generation it was read at: while the generation only moved by our own transactions
    (see track_own_change), nobody else can have changed it, so a forward add does not re-read
    a ruleset that grows with every forward. Legacy tables have no generation and are read
    each time (only their nat table, which libiptc hands over fast). Our own transactions
    cannot make orphans (a crash in one leaves the generation moved without a cache update,
    and the journal rolls it back); restore and recovery drop the cache (forget_cache)."""
    stamp = (generation, owned_digest(state.load(key)))
    cached_stamp, cached = _read_cache(key)
    if cached_stamp == stamp:
        nft_part = cached
    else:
        nft_part = _nft_forwards(key, path)
        _write_cache(key, stamp, nft_part)
    # Legacy tables only where one exists (reading must not create one).
    return nft_part + (_legacy_forwards(key, path) if legacy_present else ())


COMPAT_TABLES = {"filter", "nat", "mangle", "raw", "security"}


def _nft_forwards(key: str, path: str) -> tuple[PortForward, ...]:
    """Foreign forwards in nf_tables. Usually only iptables-nft's nat table can hold them: read
    just that, without our own thousands of lines. Native tables (Docker 29's nftables backend,
    netavark, CNI's nft portmap) need the collector's full scan."""
    tables = netns.run_in(path, nftinfo.tables_here)
    native = [t for t in tables if t.split()[-1] not in COMPAT_TABLES]  # ours too: orphans
    if native:
        fw = firewall_reader.scan({key: path})
        view = tuple(pf for pf in nat.interpret(fw.rules, fw.chains, (), ()).port_forwards
                     if pf.backend != "legacy")
        return _not_ours(view) + _orphaned(view, _owned_forward_tags(key))
    text = netns.run_command(path, ["iptables-nft-save", "-t", "nat"]).stdout
    return _interpret_foreign(text, key, "nft")


def _interpret_foreign(save: str, key: str, backend: str) -> tuple[PortForward, ...]:
    """Other tools' forwards, then our DNAT rules no saved state owns. Only those of our lines
    are parsed (a string test on each line's tag), not the thousands the state does own."""
    lines = save.splitlines()
    foreign = "\n".join(l for l in lines if state.TAG not in l)
    rules, chains = parse_save(foreign, netns=key, backend=backend, family=4)
    found = _not_ours(nat.interpret(owners.attribute(rules), chains, (), ()).port_forwards)
    owned = _owned_forward_tags(key)
    stray = [l for l in lines if l.startswith("-A ") and "DNAT" in l
             and (m := _FWD_TAG.search(l)) and m.group(1) not in owned]
    if not stray:
        return found
    ours = "\n".join([l for l in lines if l.startswith(("*", ":"))] + stray + ["COMMIT"])
    rules, chains = parse_save(ours, netns=key, backend=backend, family=4)
    return found + _orphaned(nat.interpret(owners.attribute(rules), chains, (), ()).port_forwards,
                             owned)


def _legacy_forwards(key: str, path: str) -> tuple[PortForward, ...]:
    text = netns.run_command(path, ["iptables-legacy-save", "-t", "nat"]).stdout
    return _interpret_foreign(text, key, "legacy")


def track_own_change(key: str, path: str, apply: Callable[[], int], before: State,
                     after: State) -> None:
    """Run one of our firewall changes from state `before` to `after` (apply returns how many
    nft commits it made) and, if the generation moved by exactly that much, carry the cached
    view forward: it then holds for `after` (our change makes no orphans and removes none)."""
    def inside() -> tuple[int, int, int]:  # one trip to the namespace's thread
        start = nftinfo.generation_here()
        commits = apply()
        return start, commits, nftinfo.generation_here()
    first, commits, last = netns.run_in(path, inside)
    cached_stamp, cached = _read_cache(key)
    if cached_stamp == (first, owned_digest(before)) and last == first + commits:
        _write_cache(key, (last, owned_digest(after)), cached)
