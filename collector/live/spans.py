"""Where a watcher round's time goes, recorded only when $BRIDGESCOPE_PROFILE names a directory.

Each round appends one JSON line to DIR/rounds.jsonl: what started it, the milliseconds spent
in each phase (discovery, reads, firewall, nsids, advance, publish) and in all, and the CPU
time the watcher's thread spent on the round. The rounds also
run under cProfile, whose statistics are written to DIR/watcher.prof at most every few seconds
(read them with `python -m pstats`). Off, every call is a no-op and costs one attribute lookup.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

DUMP_EVERY = 5.0  # seconds between writes of the cProfile statistics


class Spans:
    def __init__(self, directory: str | None = None):
        self.enabled = bool(directory)
        self._dir = directory or ""
        self._phases: dict[str, float] = {}
        self._started = 0.0
        self._cpu = 0.0
        self._profile = None
        self._dumped = 0.0
        if self.enabled:
            import cProfile

            os.makedirs(self._dir, exist_ok=True)
            self._profile = cProfile.Profile()

    @classmethod
    def from_env(cls) -> Spans:
        return cls(os.environ.get("BRIDGESCOPE_PROFILE") or None)

    def begin(self) -> None:
        if self.enabled:
            self._phases = {}
            self._started = time.perf_counter()
            self._cpu = time.thread_time()
            self._profile.enable()

    @contextmanager
    def span(self, name: str):
        if not self.enabled:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._phases[name] = self._phases.get(name, 0.0) + (time.perf_counter() - t0) * 1000

    def end(self, **info) -> None:
        if not self.enabled:
            return
        self._profile.disable()
        total = (time.perf_counter() - self._started) * 1000
        cpu = (time.thread_time() - self._cpu) * 1000  # the loop thread's own: load inflates it less
        line = {"at": time.time(), "total_ms": round(total, 2), "cpu_ms": round(cpu, 2),
                **{k: round(v, 2) for k, v in self._phases.items()}, **info}
        with open(os.path.join(self._dir, "rounds.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str) + "\n")
        if time.monotonic() - self._dumped >= DUMP_EVERY:
            self._dumped = time.monotonic()
            self._profile.dump_stats(os.path.join(self._dir, "watcher.prof"))
