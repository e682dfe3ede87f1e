"""Agent benchmark: one `bridgescope agent` idle on a 20-container sandbox lab.

The agent runs as it would on a node, but in a private mount and PID namespace whose
/run/netns holds only the lab's namespaces: on a shared machine other people's namespaces
and processes would otherwise be watched too, and their churn measured as the agent's. After
it has read the lab and settled (--settle seconds), its CPU time (all its processes: the
server and the firewall monitors it starts, from /proc/PID/stat) is read over --seconds and
given as % of one core, with the server's RSS (VmRSS) and its children's. One stream client
(a dashboard) stays connected throughout, as in a fleet.
Targets: idle CPU <= 1 % of a core, RSS <= 60 MB.

Run as root: .venv/bin/python bench/bench_agent.py [--containers 20] [--seconds 30] [--settle 10]
The lab, its state and the agent are removed at the end, also on failure.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bridgescope.plumbing import api, netns
from bridgescope.plumbing.lab import sandbox as lab

TICK = os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children_of(p))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def isolated_agent(namespaces: list[str], host: str, port: int, work: Path) -> subprocess.Popen:
    """The agent in its own mount + PID namespace, seeing only `namespaces` in /run/netns."""
    everything = work / "all-netns"  # the real /run/netns, namespace mounts and all
    everything.mkdir()
    binds = " && ".join(f"touch /run/netns/{n} && mount --bind {everything}/{n} /run/netns/{n}"
                        for n in namespaces)
    agent = shlex.join([sys.executable, "-m", "bridgescope.webui.cli", "agent", "--netns", host,
                        "--listen", f"127.0.0.1:{port}", "--token-file", str(work / "token")])
    script = (f"mount --rbind /run/netns {everything} && "
              "mount -t tmpfs bs-netns /run/netns && "
              "if [ -d /run/docker/netns ]; then mount -t tmpfs bs-docker /run/docker/netns; fi && "
              # Drop the copy of everything: the collector also finds namespaces by their mounts.
              f"{binds} && umount -l {everything} && exec {agent}")
    with (work / "agent.log").open("w") as out:
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                                 "--mount-proc", "sh", "-c", script],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_up(base: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(base + "/v1/info", headers={"Authorization": f"Bearer {token}"}, timeout=10).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the agent did not start:\n{log.read_text()}")


def hold_stream(base: str, token: str, stop: threading.Event) -> None:
    with requests.get(base + "/v1/events", headers={"Authorization": f"Bearer {token}"}, stream=True,
                      timeout=30) as resp:
        for _ in resp.iter_lines():
            if stop.is_set():
                return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=10.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(work / "state")
    prefix = f"bsba{secrets.token_hex(2)}"
    proc = None
    stop = threading.Event()
    try:
        info = lab.lab_up(prefix)
        for i in range(len(info.containers) + 1, args.containers + 1):
            api.create_container(f"c{i}", lab.BRIDGE, host=info.host)
        names = sorted(n for n in os.listdir(netns.NETNS_DIR) if n.startswith(prefix + "-"))
        token = secrets.token_urlsafe(16)
        (work / "token").write_text(token)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = isolated_agent(names, info.host, port, work)
        wait_up(base, token, proc, work / "agent.log")
        threading.Thread(target=hold_stream, args=(base, token, stop), daemon=True).start()
        time.sleep(args.settle)
        pids = [p for p in tree(proc.pid) if p != proc.pid]  # unshare itself only waits
        server = next(p for p in pids if comm(p).startswith("python"))
        before, began = cpu_seconds(tree(proc.pid)), time.monotonic()
        time.sleep(args.seconds)
        used, took = cpu_seconds(tree(proc.pid)) - before, time.monotonic() - began
        others = {f"{comm(p)}[{p}]": round(rss_mb(p), 1) for p in tree(proc.pid) if p not in (proc.pid, server)}
        print(f"agent idle on a {args.containers}-container lab ({len(names)} namespaces), one stream open:")
        print(f"  CPU {100 * used / took:.2f} % of one core over {took:.0f} s (target <= 1 %)")
        print(f"  RSS {rss_mb(server):.1f} MB (target <= 60 MB); its children: {others or 'none'}")
        return 0
    finally:
        stop.set()
        try:
            if proc is not None:
                _stop(proc)
        finally:
            lab.lab_down(prefix)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to its process group (the PID namespace ends with its first process), then
    SIGKILL to whatever is left."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
