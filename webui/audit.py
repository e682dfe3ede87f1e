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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
class RefusalBudget:
    """How many refusals of one kind from one client the log takes per window; the rest are
    counted, and the count goes into that client's next logged refusal of the kind. A client
    sending garbage in a loop must not fill the disk, and the operator still learns of it."""
    per_window: int = 10
    window: float = 60.0
    max_keys: int = 4096
    clock: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, str], list] = field(default_factory=dict, repr=False)  # start, logged, suppressed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, client: str, kind: str) -> int | None:
        """None: only count it. Else log it, noting this many suppressed before it."""
        now, key = self.clock(), (client, kind)
        with self._lock:
            slot = self._seen.get(key)
            if slot is None or now - slot[0] >= self.window:
                if slot is None and not self._room(now):
                    return None  # a flood from very many clients: still bounded
                self._seen[key] = [now, 1, 0]
                return slot[2] if slot else 0
            if slot[1] < self.per_window:
                suppressed, slot[1], slot[2] = slot[2], slot[1] + 1, 0
                return suppressed
            slot[2] += 1
            return None

    def _room(self, now: float) -> bool:
        if len(self._seen) >= self.max_keys:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        return len(self._seen) < self.max_keys


@dataclass
class AuditLog:
    """Append-only JSON lines file plus the most recent entries in memory."""
    path: Path | None
    keep: int = 200
    refusals: RefusalBudget = field(default_factory=RefusalBudget)
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

    def refused(self, client: str, request: dict, reason: str, *, kind: str | None = None
                ) -> AuditEntry | None:
        """Log a refused request, at most refusals.per_window per client and kind (default:
        the reason) per window."""
        suppressed = self.refusals.admit(client, kind or reason)
        if suppressed is None:
            return None
        more = f" (+{suppressed} earlier refusals from {client} not logged)" if suppressed else ""
        return self.record(client, request, (), f"refused: {reason}{more}", ok=False)

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
