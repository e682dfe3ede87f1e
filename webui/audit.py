"""The audit log: one JSON line per change asked of the dashboard, kept on disk and shown in the UI.

Each entry says when, who (client address), what was asked (method, path, parameters without
secrets), the commands that ran, and how it ended. Failures are logged too: a refused or
rolled-back change is exactly what an operator wants to find afterwards.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

SECRET_FIELDS = frozenset({"csrf_token", "token"})


@dataclass(frozen=True)
class AuditEntry:
    time: float
    client: str
    request: dict
    commands: tuple[str, ...]
    result: str  # "ok: <summary>" or "error: <message>"
    ok: bool = True

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))


def scrub(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in params if k not in SECRET_FIELDS}


@dataclass
class AuditLog:
    """Append-only JSON lines file plus the most recent entries in memory."""
    path: Path | None
    keep: int = 200
    _recent: deque = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._recent = deque(self._load_tail(), maxlen=self.keep)

    def record(self, client: str, request: dict, commands: Iterable[str], result: str,
               ok: bool = True) -> AuditEntry:
        entry = AuditEntry(time.time(), client, dict(request), tuple(commands), result, ok)
        line = json.dumps({**asdict(entry), "commands": list(entry.commands)}, sort_keys=True)
        with self._lock:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            self._recent.append(entry)
        return entry

    def recent(self, n: int = 50) -> list[AuditEntry]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._recent))[:n]

    def _load_tail(self) -> list[AuditEntry]:
        if self.path is None or not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8").splitlines()[-self.keep:]:
            try:
                raw = json.loads(line)
                entries.append(AuditEntry(raw["time"], raw["client"], raw["request"],
                                          tuple(raw["commands"]), raw["result"], raw.get("ok", True)))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged line must not stop the dashboard from starting
        return entries
