"""Firewall backends: pick the one the host already uses, apply one change as one transaction.

nft:      one `iptables-nft-restore -w --noflush` per change (only our chains and tagged rules)
legacy:   python-iptables in a worker process (legacy.py), never on a host whose rules are in nft
nftables: our own `table ip bridgescope`, replaced atomically with `nft -f`
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridgescope.collector.firewall import nftinfo, readers
from bridgescope.collector.kernel import tools
from bridgescope.plumbing import legacy, netns
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.rules import NFT_TABLE, Change, FwRule, nft_text, restore_text, teaching_commands
from bridgescope.plumbing.state import TAG

CHOICES = ("auto", "nft", "legacy", "nftables")
_RULE = re.compile(r"^-A (\S+) ", re.M)
_DOCKER_CHAIN = re.compile(r"^:DOCKER(\s|-)", re.M)
_OUR_CHAIN = re.compile(r"^:(BRIDGESCOPE-\S+)", re.M)


@dataclass(frozen=True)
class Probe:
    """What the host's firewall looks like before we write: one read of each backend."""
    nft_save: str
    legacy_save: str  # "" when no legacy table exists (never probed by creating one)
    nft_tables: tuple[str, ...]  # "family name" of native tables
    iptables_version: str


def _run(path: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return netns.run_command(path, argv, stdin)


def probe(path: str) -> Probe:
    nft_save = _run(path, ["iptables-nft-save"]).stdout
    legacy_save = ""
    if 4 in netns.run_in(path, readers.legacy_here):
        legacy_save = _run(path, ["iptables-legacy-save"]).stdout
    names = tuple(netns.run_in(path, nftinfo.tables_here))
    return Probe(nft_save, legacy_save, names, _iptables_version())


_versions: dict[tuple[str, str], str] = {}


def _iptables_version() -> str:
    """Which iptables the bare command is, asked once per program and what its alternatives
    link leads to (switching the link asks again). Run by its own name: a multi-call binary
    tells its tools apart by it."""
    program = tools.tool("iptables")
    key = (program, os.path.realpath(program))
    if key not in _versions:
        _versions[key] = subprocess.run([program, "-V"], capture_output=True, text=True,
                                        env=tools.ENV).stdout.strip()
    return _versions[key]


def _has_rules(save: str) -> bool:
    return bool(_RULE.search(save))


def _native_tables(p: Probe) -> tuple[str, ...]:
    """Native nft tables that iptables-nft does not show (Docker 29 nftables, firewalld...)."""
    compat = {"filter", "nat", "mangle", "raw", "security"}
    return tuple(t for t in p.nft_tables if t.split()[-1] not in compat)


def check_request(requested: str, current: str | None) -> None:
    """A known backend, and the one our rules already live in (if any)."""
    if requested not in CHOICES:
        raise ValidationError("firewall", f"{requested!r} is not one of {', '.join(CHOICES)}")
    if current and requested not in ("auto", current):
        raise ValidationError("firewall", f"this host's bridgescope rules live in {current}; "
                                          f"remove its networks before switching to {requested}")


def choose(requested: str, p: Probe, current: str | None) -> str:
    """Pure: the backend to write with, or a ValidationError saying why not."""
    check_request(requested, current)
    chosen = current or (_auto(p) if requested == "auto" else requested)
    nft_used = _has_rules(p.nft_save) or any(t != f"ip {NFT_TABLE}" for t in _native_tables(p))
    if chosen == "legacy" and nft_used:
        raise ValidationError("firewall", "this host keeps its rules in nf_tables; writing "
                                          "iptables-legacy rules there would split the firewall in two")
    if chosen in ("nft", "nftables") and _has_rules(p.legacy_save) and \
            not _OUR_CHAIN.search(p.nft_save) and chosen != current:
        raise ValidationError("firewall", "this host keeps its rules in iptables-legacy; writing "
                                          f"{chosen} rules there would split the firewall in two")
    return chosen


def _auto(p: Probe) -> str:
    if _DOCKER_CHAIN.search(p.nft_save):
        return "nft"
    if _DOCKER_CHAIN.search(p.legacy_save):
        return "legacy"
    if f"ip {NFT_TABLE}" in p.nft_tables or "ip docker-bridges" in p.nft_tables:
        return "nftables"
    if _OUR_CHAIN.search(p.legacy_save):
        return "legacy"
    if _has_rules(p.nft_save):
        return "nft"
    if _has_rules(p.legacy_save):
        return "legacy"
    return "legacy" if "(legacy)" in p.iptables_version else "nft"


# --- applying --------------------------------------------------------------------------

def _present_jumps(save: str) -> set[tuple[str, str, str]]:
    """(table, builtin chain, our chain) of every tagged jump that already exists."""
    out, table = set(), ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and f"{TAG}jump" in line:
            m = re.search(r"-j (BRIDGESCOPE-\S+)", line)
            if m:
                out.add((table, line.split()[1], m.group(1)))
    return out


def _present_chains(save: str) -> set[tuple[str, str]]:
    out, table = set(), ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":BRIDGESCOPE-"):
            out.add((table, line[1:].split()[0]))
    return out


def settle(change: Change, save: str) -> Change:
    """Make chain housekeeping idempotent against what the kernel already has."""
    chains, jumps = _present_chains(save), _present_jumps(save)
    return Change(
        add=change.add, delete=change.delete,
        new_chains=tuple(c for c in change.new_chains if c not in chains),
        add_jumps=tuple(j for j in change.add_jumps if (j.table, j.chain, j.target) not in jumps),
        del_jumps=tuple(j for j in change.del_jumps if (j.table, j.chain, j.target) in jumps),
        drop_chains=tuple(c for c in change.drop_chains if c in chains),
        flush_chains=change.flush_chains,
    )


def housekeeping(change: Change) -> bool:
    return bool(change.new_chains or change.add_jumps or change.del_jumps or change.drop_chains)


def apply(backend: str, path: str, change: Change,
          desired_after: Callable[[], Sequence[FwRule]]) -> int:
    """Apply one change; returns how many nf_tables transactions it committed."""
    if backend == "nftables":
        _nft_file(path, nft_text(desired_after()))
        return 1
    if backend == "legacy":
        legacy.apply(path, change)
        return 0
    if housekeeping(change):
        change = settle(change, _run(path, ["iptables-nft-save"]).stdout)
    text = restore_text(change)
    if not text:
        return 0
    res = _run(path, ["iptables-nft-restore", "-w", "5", "--noflush"], text)
    if res.returncode != 0:
        # iptables-nft-restore commits each table on its own: the tables before the failing
        # line are already in the kernel, so take them back out before reporting.
        done = committed_tables(text, res.stderr)
        if done:
            _run(path, ["iptables-nft-restore", "-w", "5", "--noflush"],
                 restore_text(change.inverse().only(done)))
        raise PlumbingError("apply the iptables-nft rules", _first_line(res))
    return text.count("\nCOMMIT")


def committed_tables(text: str, stderr: str) -> tuple[str, ...]:
    """Pure: the tables of a restore payload that were committed before `line N failed`."""
    found = re.search(r"line (\d+) failed", stderr)
    if not found:
        return ()
    failed_at, done, table = int(found.group(1)), [], None
    for number, line in enumerate(text.splitlines(), 1):
        if number >= failed_at:
            break
        if line.startswith("*"):
            table = line[1:]
        elif line == "COMMIT" and table:
            done.append(table)
    return tuple(done)


def _nft_file(path: str, text: str) -> None:
    res = _run(path, ["nft", "-f", "-"], text)
    if res.returncode != 0:
        raise PlumbingError(f"replace nftables table ip {NFT_TABLE}", _first_line(res))


def _first_line(res: subprocess.CompletedProcess) -> str:
    """The tool's complaint on one line (iptables-restore puts the reason after its banner)."""
    text = " ".join(l.strip() for l in (res.stderr or res.stdout).splitlines() if l.strip())
    return text or f"exit status {res.returncode}"


def commands(backend: str, change: Change, desired_after: Callable[[], Sequence[FwRule]],
             sh: Callable[..., str]) -> tuple[str, ...]:
    """The teaching text for a change on this backend, each line made by `sh(argv, stdin=)`."""
    if backend == "nftables":
        return (sh(("nft", "-f", "-"), stdin=nft_text(desired_after())),)
    tool = "iptables-legacy" if backend == "legacy" else "iptables"
    return tuple(sh((tool, *argv[1:]) if argv[0] == "iptables" else argv)
                 for argv in teaching_commands(change))
