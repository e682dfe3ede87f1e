"""`bridgescope serve` as a child process, for the browser tests and the web benchmark.

The server runs in its own session so a stop can reach everything it started: SIGTERM to the
server first (a graceful stop ends the open event streams and lets the Watcher close its
firewall watches), then SIGKILL to whatever is left in its process group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(netns: str | None, port: int, *, args: Sequence[str] = (), env: dict[str, str] | None = None,
          output: IO | int = subprocess.DEVNULL, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """serve on 127.0.0.1:port; netns None: no --netns (a fleet dashboard shows no local host).
    prefix: argv that runs the rest (and must exec it, keeping the PID that stop() signals)."""
    argv = [*prefix, sys.executable, "-m", "bridgescope.webui.cli", "serve", *(("--netns", netns) if netns else ()),
            "--listen", f"127.0.0.1:{port}", *args]
    return subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=output,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_answering(proc: subprocess.Popen, url: str, *, headers: dict[str, str] | None = None,
                         timeout: float = 30.0, log: Path | None = None) -> None:
    """Poll url until it answers 200 (bounded); a server that exits or never answers fails
    with its log. The banner comes before the Watcher has read every namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(url, headers=headers, timeout=timeout).ok:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    output = log.read_text() if log is not None and log.exists() else ""
    raise RuntimeError(f"bridgescope serve did not start (exit status {proc.poll()}):\n{output}")


@contextmanager
def serving(netns: str | None, token: str, state: Path, log: Path, *, args: Sequence[str] = (),
            timeout: float = 600.0, env: dict[str, str] | None = None,
            prefix: Sequence[str] = ()) -> Iterator[str]:
    """A serve process for the with-block, its state in `state`, its output in `log`: its base
    URL once it answers (a busy machine's Watcher reads every namespace first), stopped after.
    env and prefix as for start()."""
    port = free_port()
    with log.open("a") as out:
        proc = start(netns, port, args=args, output=out, prefix=prefix,
                     env={**(env or {}), "BRIDGESCOPE_TOKEN": token, "BRIDGESCOPE_STATE_DIR": str(state)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(proc, base + "/api/session", headers={"Authorization": f"Bearer {token}"},
                             timeout=timeout, log=log)
        yield base
    finally:
        stop(proc)


def login(base: str, token: str) -> dict[str, str]:
    """What a tab does once: trade the access token for a session. Returns the headers its
    requests then carry (the session, and our own Origin, which every change needs)."""
    resp = requests.post(base + "/auth/session", timeout=10,
                         headers={"Authorization": f"Bearer {token}", "Origin": base})
    resp.raise_for_status()
    return {"X-Bridgescope-Session": resp.json()["session"], "Origin": base}


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
