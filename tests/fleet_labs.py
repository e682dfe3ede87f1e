"""Simulated fleet nodes for the fleet tests and the fleet benchmark: sandbox labs (each a host
namespace with containers and a forward) and one `bridgescope agent` process per lab on a free
127.0.0.1 port. Agents run in their own session and are stopped by their PID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import serve_process

TOKEN = "fleet-test-agent-token"


@dataclass
class Agent:
    name: str
    netns: str
    port: int
    token_file: Path
    log: Path
    state_dir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, allow_changes: bool = True, wait: float = 600.0) -> Agent:
        argv = [sys.executable, "-m", "bridgescope.webui.cli", "agent", "--name", self.name,
                "--netns", self.netns, "--listen", f"127.0.0.1:{self.port}",
                "--token-file", str(self.token_file), "--audit-log", str(self.log.with_suffix(".audit.jsonl"))]
        if allow_changes:
            argv.append("--allow-changes")
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "BRIDGESCOPE_STATE_DIR": str(self.state_dir)})
        self.wait_answering(wait)
        return self

    def wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(self.url + "/v1/info", timeout=10,
                                headers={"Authorization": f"Bearer {TOKEN}"}).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"agent {self.name} did not start ({self.proc.poll()}):\n{self.log.read_text()}")

    def kill(self) -> None:
        """Dead at once, as a crashed node is: SIGKILL to its PID, then its group."""
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            serve_process.stop(self.proc)
            self.proc = None


def make_agent(name: str, netns: str, tmp: Path, state_dir: Path) -> Agent:
    token_file = tmp / "agent-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return Agent(name, netns, serve_process.free_port(), token_file, tmp / f"agent-{name}.log", state_dir)
