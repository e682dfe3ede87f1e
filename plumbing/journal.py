"""Write-ahead journal: a change's intent is on disk before the kernel is touched.

One small file per managed host namespace, beside its state file. `begin` writes the intent
(the action, the firewall backend, the plan's steps and commands, and what the state file
cannot tell: the namespaces the change makes, the forwarding sysctl to put back) fsynced and
renamed into place before the first kernel step; `end` removes it once the steps ran and the
new state was saved. Saving the state is the commit point: a file still present means a
change was interrupted (kill -9, power loss, an undo that failed), and recovery makes the
kernel match the saved state again (see api.recover): the state before the change if the
crash came before the save (rolled back), the state after it if it came later (completed).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bridgescope.plumbing import state


@dataclass(frozen=True)
class Intent:
    action: str  # the change's summary: "forward 8080:80/tcp -> web (172.30.0.2)"
    backend: str  # the firewall backend the change writes to
    steps: tuple[str, ...]  # plain words, in order
    commands: tuple[str, ...]  # the equivalent commands (what the audit shows)
    # The state file as it was at begin (inode, size, mtime; None: absent): another one at
    # recovery means the new state was saved, so the change is complete.
    state_file: tuple[int, int, int] | None
    new_netns: tuple[str, ...] = ()  # container namespaces the change creates
    forwarding: str | None = None  # ip_forward to put back if no network is left


def path_for(host: str) -> Path:
    return state.journal_path(host)


def to_dict(intent: Intent) -> dict:
    return asdict(intent)


def from_dict(data: dict) -> Intent:
    ident = data.get("state_file")
    return Intent(data["action"], data["backend"], tuple(data["steps"]), tuple(data["commands"]),
                  tuple(ident) if ident else None, tuple(data.get("new_netns", ())),
                  data.get("forwarding"))


def state_file_identity(host: str) -> tuple[int, int, int] | None:
    try:
        st = state.path_for(host).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


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
