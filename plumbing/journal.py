"""Write-ahead journal: a change's intent is on disk before the kernel is touched.

One small file per managed host namespace, beside its state file. `begin` writes the intent
(the state before and after, the firewall backend, the plan's steps and commands) fsynced and
renamed into place before the first kernel step; `end` removes it once the steps ran and the
new state was saved. A file still present means a change was interrupted (kill -9, power
loss, an undo that failed): its steps may have reached the kernel in part, and nothing
confirmed them, so recovery puts the kernel back to the state before (see api.recover).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bridgescope.plumbing import state
from bridgescope.plumbing.state import State


@dataclass(frozen=True)
class Intent:
    action: str  # the change's summary: "forward 8080:80/tcp -> web (172.30.0.2)"
    before: State
    after: State
    backend: str  # the firewall backend the change writes to
    steps: tuple[str, ...]  # plain words, in order
    commands: tuple[str, ...]  # the equivalent commands (what the audit shows)


def path_for(host: str) -> Path:
    return state.journal_path(host)


def to_dict(intent: Intent) -> dict:
    return {"action": intent.action, "before": state.to_dict(intent.before),
            "after": state.to_dict(intent.after), "backend": intent.backend,
            "steps": list(intent.steps), "commands": list(intent.commands)}


def from_dict(data: dict) -> Intent:
    return Intent(data["action"], state.from_dict(data["before"]), state.from_dict(data["after"]),
                  data["backend"], tuple(data["steps"]), tuple(data["commands"]))


def begin(host: str, intent: Intent) -> None:
    """Durable before returning: the file's data and its name (the directory) are fsynced."""
    directory = state.state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{host}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(to_dict(intent), separators=(",", ":")))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path_for(host))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def end(host: str) -> None:
    """The change is confirmed (or fully undone): nothing to recover. Synced too: a removal
    lost to a power cut would make the next command roll back a change already reported done."""
    path = path_for(host)
    if path.exists():
        path.unlink()
        _fsync_dir(path.parent)


def pending(host: str) -> Intent | None:
    try:
        with open(path_for(host), encoding="utf-8") as fh:
            return from_dict(json.load(fh))
    except FileNotFoundError:
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
