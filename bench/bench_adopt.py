"""Adopt benchmark: one port forward added to a running Docker container, on a host with N
Docker containers, through the Python API (plumbing.api.add_forward: the CLI's start-up
apart), against `docker run -p` of one more container on the same daemon in the same run.

A real dockerd confined to a throwaway namespace (tests/engines.py starts it and imports the
busybox image), N = 10, 50, 100 containers on its docker0 (one serves HTTP and is the target).
Per size: the first add (cold: the host's first forward of ours, which creates our chains and
the DOCKER-USER jump and reads the host's NAT rules for conflicts; it stays while the others
run) and the median of `--runs` adds of one more forward (wall time, and CPU time of this
process and its iptables children), each removed again before the next; the yardstick is the median of `docker run -d -p` wall times
and dockerd's CPU for them. Sizes that would not finish within `--budget` seconds are left
out and said so. Target: <= 20 ms CPU per forward, flat from 10 to 100 containers.

Run as root: .venv/bin/python bench/bench_adopt.py [--sizes 10,50,100] [--runs 7] [--budget 480]
Everything (containers, dockerd, namespaces, state) is removed at the end, also on failure.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_plumbing import cpu_seconds
from engines import DOCKERD, HTTPD, IMAGE, Docker, start_docker, teardown

from bridgescope.collector.kernel import containers
from bridgescope.plumbing import api

TARGET = "bsbench-web"
IDLE = ["/bin/busybox", "sleep", "1000000"]


def process_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grow(docker: Docker, have: int, want: int) -> None:
    """Idle containers on docker0 until `want` are running (the target counts as one)."""
    for i in range(have, want):
        docker.cli("run", "-d", "--name", f"bsbench-idle{i}", IMAGE, *IDLE)


def one_add(docker: Docker, port: int, *, keep: bool = False) -> tuple[float, float]:
    """(wall, CPU) of adding one forward to the target; removed again, unmeasured, unless kept."""
    start, cpu = time.perf_counter(), cpu_seconds()
    api.add_forward(TARGET, f"{port}:80", host=docker.ns)
    took, took_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if not keep:
        api.remove_forward(TARGET, f"{port}:80", host=docker.ns)
    return took, took_cpu


def one_docker_run(docker: Docker, port: int) -> tuple[float, float]:
    """(wall, dockerd CPU + the CLI's CPU) of `docker run -d -p` of one more container."""
    daemon = docker.pids[0]
    start, cpu, dcpu = time.perf_counter(), cpu_seconds(), process_cpu(daemon)
    docker.cli("run", "-d", "--name", f"bsbench-yard{port}", "-p", f"{port}:80", IMAGE, *HTTPD)
    took = time.perf_counter() - start
    spent = cpu_seconds() - cpu + process_cpu(daemon) - dcpu
    docker.cli("rm", "-f", f"bsbench-yard{port}")
    return took, spent


def measure(docker: Docker, size: int, runs: int) -> dict[str, float]:
    base = 20000 + size * 100
    cold = one_add(docker, base, keep=True)
    adds = [one_add(docker, base + 1 + k) for k in range(runs)]
    api.remove_forward(TARGET, f"{base}:80", host=docker.ns)
    yard = [one_docker_run(docker, base + 50 + k) for k in range(max(3, runs // 2))]
    return {"cold": cold[0], "cold_cpu": cold[1],
            "add": statistics.median(a[0] for a in adds),
            "add_cpu": statistics.median(a[1] for a in adds),
            "run": statistics.median(y[0] for y in yard),
            "run_cpu": statistics.median(y[1] for y in yard)}


def report(size: int, f: dict[str, float]) -> None:
    print(f"N={size:>3}: add_forward {f['add'] * 1000:6.1f} ms wall, {f['add_cpu'] * 1000:5.1f} ms CPU "
          f"(cold first add {f['cold'] * 1000:6.1f} ms wall, {f['cold_cpu'] * 1000:5.1f} ms CPU); "
          f"docker run -p {f['run'] * 1000:6.0f} ms wall, {f['run_cpu'] * 1000:5.0f} ms CPU "
          f"(dockerd + CLI); ratio ours/docker run: wall {f['add'] / f['run']:.3f}, "
          f"CPU {f['add_cpu'] / f['run_cpu']:.3f}", flush=True)


def run(workdir: Path, sizes: list[int], runs: int, budget: float) -> dict[int, dict[str, float]]:
    began = time.monotonic()
    docker = start_docker(workdir, f"bsb{secrets.token_hex(2)}", "nft")
    figures: dict[int, dict[str, float]] = {}
    try:
        containers.choose_engine_sockets([docker.socket])
        docker.cli("run", "-d", "--name", TARGET, IMAGE, *HTTPD)
        have = 1
        for size in sizes:
            spent = time.monotonic() - began
            per_size = spent / max(have, 1) * (size - have) + (spent / len(figures) if figures else 0)
            if figures and spent + per_size > budget:
                print(f"N={size}: left out, would not fit in the {budget:.0f} s budget "
                      f"({spent:.0f} s spent)", flush=True)
                continue
            grow(docker, have, size)
            have = size
            figures[size] = measure(docker, size, runs)
            report(size, figures[size])
    finally:
        containers.choose_engine_sockets(())
        teardown(docker)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--budget", type=float, default=480)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (starts dockerd in a network namespace)", file=sys.stderr)
        return 1
    if not os.path.exists(DOCKERD):
        print("dockerd is not installed (make deps installs docker.io)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bsbench-adopt-") as tmp:
        os.environ["BRIDGESCOPE_STATE_DIR"] = f"{tmp}/state"
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {os.uname().release}, "
              f"load average {os.getloadavg()[0]:.1f} (2 vCPUs shared)", flush=True)
        figures = run(Path(tmp), [int(s) for s in args.sizes.split(",")], args.runs, args.budget)
    if len(figures) > 1:
        first, last = min(figures), max(figures)
        print(f"growth N={first} -> N={last}: x{figures[last]['add'] / figures[first]['add']:.2f} wall, "
              f"x{figures[last]['add_cpu'] / figures[first]['add_cpu']:.2f} CPU (target: flat, "
              f"<= 20 ms CPU per forward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
