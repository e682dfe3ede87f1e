"""What the doctor reports: one problem, the objects it concerns, and how to fix it."""
from __future__ import annotations

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

