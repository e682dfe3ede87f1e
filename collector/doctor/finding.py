"""What the doctor reports: one problem, the objects it concerns, and how to fix it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    id: str  # stable kebab-case id, e.g. "ip-forward-off"
    severity: str  # "error" | "warning" | "info"
    objects: tuple[str, ...]  # graph element ids (namespace, interface, pf:...) it concerns
    title: str  # one line
    explanation: str  # plain words: what is wrong and what the user sees because of it
    fix: tuple[str, ...]  # command lines that fix it, in order


def counts_of(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each severity, every severity named (the CLI's summary, the
    stream's doctor event, the agent's snapshot)."""
    findings = tuple(findings)
    return {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
