"""Pod names from containerd: what naming N pod sandboxes costs a discovery.

A real containerd confined to a throwaway namespace (tests/engines.py starts it), N sandboxes
labelled as CRI labels them, each in a namespace of its own. Per size: the first
`containerd.pod_names` (cold: Containers/List, then Tasks/List for the pids), the median and
worst of `--runs` more (cached: Containers/List alone), the size of containerd's answer, and
a whole `discover()` with the socket against without it (medians). The client is the standard
library's (collector/kernel/containerd.py): its import adds under 1 MB to the process.

Run as root: .venv/bin/python bench/bench_containerd.py [--sizes 10,50,100] [--runs 20]
Everything (sandboxes, shims, containerd, namespaces) is removed at the end, also on failure.
"""
from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import RUN_PREFIX
from engines import CONTAINERD, SANDBOX_LABELS, make_netns, start_containerd, teardown

from bridgescope.collector.kernel import containerd
from bridgescope.collector.kernel.namespaces import discover


def timed(fn, runs: int) -> tuple[object, list[float]]:
    took, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        took.append(time.perf_counter() - started)
    return result, took


def one_size(n: int, runs: int) -> str:
    tag = secrets.token_hex(2)
    host = start_containerd(Path(tempfile.mkdtemp(prefix="bench-containerd-")), tag)
    pods = [f"{RUN_PREFIX}{tag}-p{i}" for i in range(n)]
    try:
        for i, ns in enumerate(pods):
            make_netns(ns)
            host.run_pod(f"sb{i}", ns, {**SANDBOX_LABELS, "io.kubernetes.pod.namespace": "bench",
                                        "io.kubernetes.pod.name": f"web{i}"})
        containerd._located.clear()
        _, cold = timed(lambda: containerd.pod_names([host.socket]), 1)
        names, warm = timed(lambda: containerd.pod_names([host.socket]), runs)
        assert isinstance(names, dict) and len(names) == n, names
        _, with_socket = timed(lambda: discover(engine_sockets=[host.socket]), runs)
        _, without = timed(lambda: discover(engine_sockets=[]), runs)
        with containerd.connect(host.socket) as conn:
            size = len(conn.call(containerd.LIST_CONTAINERS,
                                 containerd.list_containers_request([containerd.SANDBOX_FILTER]),
                                 containerd.NAMESPACE))
    finally:
        teardown(host, pods)
    ms = 1000
    return (f"| {n} | {cold[0] * ms:.1f} ms | {statistics.median(warm) * ms:.2f} ms | {max(warm) * ms:.2f} ms "
            f"| {size / 1024:.0f} KiB | {statistics.median(with_socket) * ms:.1f} ms "
            f"| {statistics.median(without) * ms:.1f} ms |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not Path(CONTAINERD).exists():
        print(f"{CONTAINERD} is not installed", file=sys.stderr)
        return 1
    print("| N sandboxes | first (cold) | cached p50 | cached max | Containers/List answer "
          "| discover() with socket p50 | without p50 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        print(one_size(n, args.runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
