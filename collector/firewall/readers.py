"""Kernel edge: run the firewall dump tools inside one network namespace.

Each namespace costs a handful of short processes, started together and read as they
finish. Nothing here may create firewall state: legacy tables are only dumped when the
namespace already has some (reading /proc/thread-self/net/ip_tables_names from a thread
that joined the namespace creates nothing, unlike `iptables-legacy -L` or python-iptables),
and `nft -j list table` runs only for native tables (iptables-nft-save shows the others).
"""
from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridgescope.collector.firewall import nftinfo
from bridgescope.collector.kernel.procfs import read_small
from bridgescope.collector.kernel.setns import inside, libc

if TYPE_CHECKING:
    import subprocess
# hashlib, subprocess and the tool finder are imported where a table is digested or a tool
# started: `snapshot` of namespaces without tables asks has_tables_here only.

TIMEOUT = 20.0
LEGACY_NAMES = {4: "ip_tables_names", 6: "ip6_tables_names"}
# x_tables' own getsockopt interface (docs/kernel-events.md): the level and socket family per IP family
LEGACY_SOCKOPT = {4: (socket.AF_INET, socket.IPPROTO_IP), 6: (socket.AF_INET6, socket.IPPROTO_IPV6)}
SO_GET_INFO, SO_GET_ENTRIES = 64, 65
_GETINFO = struct.Struct("=32sI5I5III")  # name, valid_hooks, hook_entry, underflow, num_entries, size
_ENTRIES_HEAD = 40  # name[32], size, then the entries at 8-byte alignment
SAVE_TOOLS = {("nft", 4): "iptables-nft-save", ("nft", 6): "ip6tables-nft-save",
              ("legacy", 4): "iptables-legacy-save", ("legacy", 6): "ip6tables-legacy-save"}



@dataclass(frozen=True)
class SaveText:
    backend: str  # "legacy" or "nft"
    family: int
    text: str


@dataclass(frozen=True)
class NamespaceDump:
    """Everything the tools printed for one namespace; parsing happens elsewhere."""
    netns: str
    saves: tuple[SaveText, ...] = ()
    nft_json: tuple[str, ...] = ()  # `nft -j list table F T` per native table
    problems: tuple[str, ...] = ()


KEEP_READS = 4096
_last: dict[str, tuple[tuple, NamespaceDump]] = {}  # namespace id -> (fingerprint, what was read)
_last_lock = threading.Lock()


def dump_namespace(ns_id: str, path: str, *, reuse: bool = False) -> NamespaceDump:
    """Run the save tools for one namespace ({id}: nsfs path); never raises for tool trouble.

    One trip into the namespace asks the kernel which tables exist (legacy x_tables names,
    nf_tables tables over netlink) and for a fingerprint of the rules (nf_tables' generation,
    a hash of each legacy table's entries); only the tools with something to show are
    started, so a container namespace without rules costs no process at all, and nothing is
    started when the fingerprint is the one of the previous read. The fingerprint is taken
    before the tools run: a change meanwhile leaves a newer one next time, never a stale read.

    Only a caller that holds the namespace open between reads passes `reuse` (the Watcher):
    an nsfs inode, and with it the id, is given to a new namespace once the old one is freed,
    and nf_tables' generation ignores packet counters, so a reused read keeps the counters of
    the last rule change. Every other read (the CLI, the packet path, the doctor, a panel)
    runs the tools and shows the counters the kernel has now.
    """
    try:
        legacy, tables, fingerprint = probe_tables(path)
    except OSError as err:
        return NamespaceDump(ns_id, problems=(f"namespace {ns_id} vanished during the firewall "
                                              f"scan ({err.strerror})",))
    if not reuse:
        return _run_tools(ns_id, path, legacy, tables)
    with _last_lock:
        known = _last.get(ns_id)
    if fingerprint is not None and known is not None and known[0] == fingerprint:
        return known[1]
    dump = _run_tools(ns_id, path, legacy, tables)
    if fingerprint is not None and not dump.problems:
        with _last_lock:
            _last.pop(ns_id, None)
            _last[ns_id] = (fingerprint, dump)
            while len(_last) > KEEP_READS:  # namespaces come and go: forget the longest unchanged
                _last.pop(next(iter(_last)))
    return dump


def forget_reads(ns_ids: Iterable[str] | None = None) -> None:
    """Read these namespaces' rules (None: every one's) with the tools again: a cold read, or
    namespaces the Watcher let go of, whose ids a new namespace may get."""
    with _last_lock:
        if ns_ids is None:
            _last.clear()
        for ns_id in ns_ids or ():
            _last.pop(ns_id, None)


def _run_tools(ns_id: str, path: str, legacy: set[int], tables: list[tuple[str, str]]) -> NamespaceDump:
    # here, not at the top: a snapshot of namespaces without tables asks has_tables_here only
    from bridgescope.collector.firewall.nftjson import COMPAT_TABLES, FAMILIES

    compat = {FAMILIES[fam] for fam, name in tables if (fam, name) in COMPAT_TABLES and fam in FAMILIES}
    jobs = {key: start_tool(path, [tool, "-c"]) for key, tool in SAVE_TOOLS.items()
            if key[1] in (compat if key[0] == "nft" else legacy)}
    # Per table rather than `list ruleset`: that would also print every iptables-nft rule,
    # as JSON we would throw away (0.5 s for 5,000 rules).
    table_jobs = {table: start_tool(path, ["nft", "-j", "list", "table", *table])
                  for table in tables if table not in COMPAT_TABLES}
    saves, problems, nft_json = [], [], []
    for (backend, family), job in jobs.items():
        out, problem = finish_tool(job, SAVE_TOOLS[(backend, family)], ns_id)
        if problem:
            problems.append(problem)
        elif out.strip():
            saves.append(SaveText(backend, family, without_comments(out)))
    for (family, name), job in table_jobs.items():
        out, problem = finish_tool(job, f"nft -j list table {family} {name}", ns_id)
        if problem:
            problems.append(problem)
        else:
            nft_json.append(out)
    return NamespaceDump(ns_id, tuple(saves), tuple(nft_json), tuple(problems))


def probe_tables(path: str) -> tuple[set[int], list[tuple[str, str]], tuple | None]:
    """(legacy families, nf_tables (family, name) pairs, fingerprint of every rule or None
    when it cannot be had) of the namespace at path; creates nothing."""
    with inside(path):
        legacy = legacy_here()
        tables = [tuple(t.split(" ", 1)) for t in nftinfo.tables_here()]
        try:
            fingerprint = (tuple(sorted(legacy)), tuple(tables), nftinfo.generation_here() if tables else None,
                           tuple(legacy_digests_here(legacy)))
        except OSError:
            fingerprint = None
        return legacy, tables, fingerprint


def legacy_digests_here(families: set[int]) -> list[tuple[int, str, str]]:
    """(family, table, digest of its entries) for each legacy table in the calling thread's
    namespace: one getsockopt each, instead of a save tool. Counters are part of the entries,
    so a packet counted changes the digest, as it changes `-c`'s output."""
    out = []
    for family in sorted(families):
        names = _read_names(f"/proc/thread-self/net/{LEGACY_NAMES[family]}").split()
        if not names:
            continue
        domain, level = LEGACY_SOCKOPT[family]
        with socket.socket(domain, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            out += [(family, name, _table_digest(sock.fileno(), level, name)) for name in sorted(names)]
    return out


def _table_digest(fd: int, level: int, name: str) -> str:
    info = ctypes.create_string_buffer(_GETINFO.pack(name.encode(), 0, *[0] * 10, 0, 0), _GETINFO.size)
    _getsockopt(fd, level, SO_GET_INFO, info)
    size = _GETINFO.unpack(info.raw)[-1]
    entries = ctypes.create_string_buffer(_ENTRIES_HEAD + size)
    struct.pack_into("=32sI", entries, 0, name.encode(), size)
    _getsockopt(fd, level, SO_GET_ENTRIES, entries)  # EAGAIN when the table changed meanwhile
    import hashlib

    return hashlib.blake2b(entries.raw, digest_size=16).hexdigest()


def _getsockopt(fd: int, level: int, option: int, buf: ctypes.Array) -> None:
    """getsockopt with a buffer that carries input too (the table's name), which Python's cannot."""
    length = ctypes.c_uint(len(buf))
    if libc.getsockopt(fd, level, option, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"x_tables getsockopt {option}: {os.strerror(err)}")


def without_comments(save: str) -> str:
    """Drop the `# Generated ... on <date>` lines: they carry no rules, and without them
    an unchanged rule set gives identical text (which the parse cache relies on)."""
    return "\n".join(line for line in save.split("\n") if not line.startswith("#"))


def legacy_families(path: str) -> set[int]:
    """Families (4, 6) for which the namespace at path already has legacy x_tables."""
    with inside(path):
        return legacy_here()


def has_tables_here() -> bool:
    """Whether the calling thread's namespace has any legacy or nf_tables table: without one,
    dump_namespace would start no tool and find no rule (a container's namespace, usually)."""
    return bool(legacy_here()) or bool(nftinfo.tables_here())


def legacy_here() -> set[int]:
    """Families with legacy x_tables in the calling thread's namespace; none when the ip_tables
    modules were never loaded (the /proc files do not exist then)."""
    return {family for family, name in LEGACY_NAMES.items()
            if _read_names(f"/proc/thread-self/net/{name}")}


def _read_names(proc_file: str) -> str:
    try:
        return read_small(proc_file).strip()
    except FileNotFoundError:  # x_tables not loaded at all: certainly no legacy tables
        return ""


def start_tool(path: str, argv: list[str]) -> subprocess.Popen | OSError:
    import subprocess

    from bridgescope.collector.kernel import tools

    try:
        return subprocess.Popen(tools.nsenter(path, argv), stdin=subprocess.DEVNULL, env=tools.ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as err:  # nsenter itself missing
        return err


def finish_tool(job: subprocess.Popen | OSError, what: str, ns_id: str) -> tuple[str, str | None]:
    """Wait for a started tool -> (stdout, None) or ("", a one-line problem)."""
    if isinstance(job, OSError):
        return "", f"cannot run {what} in namespace {ns_id}: {job.strerror}"
    import subprocess

    try:
        out, err = job.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        job.kill()
        job.communicate()
        return "", f"{what} in namespace {ns_id} did not answer within {TIMEOUT:.0f} s"
    if job.returncode == 0:
        return out, None
    first = (err.strip().splitlines() or ["no message"])[0]
    if job.returncode == 127 or "No such file" in first and "execute" in first:
        return "", f"{what.split()[0]} is not installed, so namespace {ns_id} was read without it"
    return "", f"{what} failed in namespace {ns_id}: {first}"
