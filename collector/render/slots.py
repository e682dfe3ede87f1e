"""The picture's slots: where each bridge's columns and each container's cell are, remembered
by identity so that the layout (collector/render/graph.py) gives every page the same picture,
kept in this process for each host it has drawn and, for `serve`, in a file across restarts."""
from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Slots:
    """What the layout remembers by identity: bridge name -> columns (in order of arrival),
    (bridge name, container key) -> cell index."""
    bridges: tuple[tuple[str, int], ...] = ()
    cells: tuple[tuple[str, str, int], ...] = ()


_REMEMBERED: dict[str, Slots] = {}
_STORE: list[Path] = []  # where this process keeps _REMEMBERED across restarts, if anywhere
_LOCK = threading.Lock()  # the live source and API requests lay out from several threads
MAX_STORED_HOSTS = 64  # the file stays small: the hosts drawn last, and
MAX_STORED_CELLS = 50_000  # at most this many containers' cells of each
MAX_STORE_BYTES = 16 << 20
log = logging.getLogger(__name__)


def remembered_slots(host_key: str) -> Slots:
    return _REMEMBERED.get(host_key, Slots())


def remember(host_key: str, slots: Slots) -> None:
    """The slots last drawn for this host (kept in the file too, when there is one)."""
    if _REMEMBERED.get(host_key) == slots:
        return
    with _LOCK:
        _REMEMBERED.pop(host_key, None)  # the newest last: the oldest go first when the file is full
        _REMEMBERED[host_key] = slots
    if _STORE:
        _WRITER.wanted.set()


# ---- slots kept across restarts -------------------------------------------------------------

WRITE_GAP = 0.5  # seconds between two writes of the file: a burst of changes is one write


class _SlotWriter:
    """Writes the remembered slots off the caller's thread: a live round publishes its delta
    without waiting for the file (tens of milliseconds at a thousand containers), and a burst
    of changes costs one write. What is pending at exit is written then."""

    def __init__(self) -> None:
        self.wanted = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bridgescope-slots", daemon=True)
            self._thread.start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            self.flush()
            time.sleep(WRITE_GAP)

    def flush(self) -> None:
        if not _STORE or not self.wanted.is_set():
            return
        with _LOCK:
            self.wanted.clear()
            remembered = dict(_REMEMBERED)
        write_slots(_STORE[0], remembered)


_WRITER = _SlotWriter()


def keep_slots_in(path: Path) -> None:
    """From now on the slots this process remembers are read from and written to `path`."""
    _STORE[:] = [path]
    _REMEMBERED.update(read_slots(path))
    _WRITER.start()


def read_slots(path: Path) -> dict[str, Slots]:
    """The slots stored at `path`; a missing file is none, a damaged one is none and a warning
    (the picture is then laid out afresh, which only costs the old places)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_STORE_BYTES + 1)
        if len(raw) > MAX_STORE_BYTES:
            raise ValueError("larger than any file bridgescope writes")
        return {str(host): _slots_from(entry) for host, entry in json.loads(raw)["hosts"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.warning("ignoring the picture's remembered places in %s: %s", path, err)
        return {}


def _slots_from(entry: dict) -> Slots:
    bridges = tuple((str(name), int(cols)) for name, cols in entry["bridges"])
    cells = tuple((str(bridge), str(key), int(index)) for bridge, key, index in entry["cells"])
    if any(cols < 1 for _, cols in bridges) or any(index < 0 for _, _, index in cells):
        raise ValueError("negative place")
    return Slots(bridges, cells)


def write_slots(path: Path, remembered: dict[str, Slots]) -> None:
    """Write-then-rename in the same directory: a reader sees the old file or the new one."""
    hosts = list(remembered.items())[-MAX_STORED_HOSTS:]
    body = {"hosts": {host: {"bridges": list(s.bridges), "cells": list(s.cells[:MAX_STORED_CELLS])}
                      for host, s in hosts}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".slots.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(body, separators=(",", ":")))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:  # the picture still works; only a restart would lose the places
        log.warning("could not keep the picture's places in %s: %s", path, err)
