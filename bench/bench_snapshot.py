"""Benchmark: `bridgescope snapshot --json` against the iproute2 loop and plotnetcfg, and the
watcher's change-to-delta latency, on N = 50, 200, 500 container namespaces.

Each size builds a throwaway host namespace with one bridge and N containers (veth into the
bridge, address, default route) with `ip -b` batches, measures, and deletes everything it
made (its own unique prefix only), also on failure or Ctrl-C. Run as root:

    .venv/bin/python bench/bench_snapshot.py [--sizes 50,200,500] [--runs 3] [--changes 60]
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from pyroute2 import IPRoute

from bridgescope.collector.kernel.namespaces import discover
from bridgescope.collector.live.watcher import Watcher

BRIDGESCOPE = [sys.executable, "-m", "bridgescope.webui.cli"]


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def build(prefix: str, n: int) -> str:
    host = f"{prefix}-host"
    names = [f"{prefix}-{i}" for i in range(1, n + 1)]
    with tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False) as batch:
        batch.write(f"netns add {host}\n")
        batch.writelines(f"netns add {name}\n" for name in names)
    run(["ip", "-b", batch.name])
    with open(batch.name, "w") as fh:
        fh.write("link set lo up\nlink add br0 type bridge\naddr add 10.200.0.1/16 dev br0\nlink set br0 up\n")
        for i, name in enumerate(names, 1):
            fh.write(f"link add vh{i} type veth peer name eth0 netns {name}\nlink set vh{i} master br0 up\n")
    run(["ip", "-n", host, "-b", batch.name])
    os.unlink(batch.name)
    for i, name in enumerate(names, 1):
        script = (f"link set lo up\nlink set eth0 up\naddr add 10.200.{i // 250 + 1}.{i % 250 + 1}/16 dev eth0\n"
                  "route add default via 10.200.0.1\n")
        run(["ip", "-n", name, "-b", "-"], input=script)
    return host


def compile_bytecode(root: str) -> None:
    """Write the package's .pyc files first: an installed package has them, while a checkout
    run with PYTHONDONTWRITEBYTECODE=1 would compile every module in every timed run."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(os.path.join(root, d) for d in ("collector", "webui"))],
                   check=True, capture_output=True)


def package_root() -> str:
    import bridgescope.collector
    return os.path.dirname(os.path.dirname(bridgescope.collector.__file__))


def teardown(prefix: str) -> None:
    for entry in sorted(os.listdir("/run/netns")):
        if entry.startswith(prefix + "-"):
            subprocess.run(["ip", "netns", "del", entry], capture_output=True)


def timed_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in KiB, CPU seconds, its children's included) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.read().decode().strip()}")
    return wall, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def retried(fn, attempts: int = 5):
    """plotnetcfg aborts when a namespace disappears under it (other users of the machine)."""
    for attempt in range(attempts):
        try:
            return fn()
        except RuntimeError:
            if attempt == attempts - 1:
                raise


def best(fn, runs: int) -> tuple[float, int, float]:
    """Best wall time, the largest peak RSS, the least CPU time of `runs` runs."""
    results = [fn() for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results), min(r[2] for r in results)


def iproute2_loop() -> tuple[float, int, float]:
    """What a shell script does today: three `ip -j -d` per namespace in /run/netns."""
    start = time.perf_counter()
    for ns in sorted(os.listdir("/run/netns")):
        for what in (["link", "show"], ["addr", "show"], ["route", "show"]):
            subprocess.run(["ip", "-n", ns, "-j", "-d", *what], capture_output=True)
    return time.perf_counter() - start, 0, 0.0


def plotnetcfg_argv() -> list[str] | None:
    if shutil.which("plotnetcfg") is None:
        return None
    try:
        os.stat("/proc/1/ns/net")
        return ["plotnetcfg", "-f", "json"]
    except PermissionError:
        return ["unshare", "-p", "-f", "--mount-proc", "plotnetcfg", "-f", "json"]


def delta_latency(host: str, prefix: str, n: int, changes: int) -> tuple[list[float], float, int]:
    """Seconds from an address change in one container to the delta showing it."""
    watcher = Watcher(host, firewall=False, rescan_interval=3600, heal_interval=3600)
    start = time.perf_counter()
    watcher.start()
    startup = time.perf_counter() - start
    q = watcher.subscribe()
    q.get()
    latencies = []
    try:
        targets = [f"{prefix}-{1 + (k * 7919) % n}" for k in range(changes)]
        sockets = {t: IPRoute(netns=f"/run/netns/{t}", flags=0) for t in set(targets)}  # opened before timing
        for k, target in enumerate(targets):
            ipr = sockets[target]
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            address = f"10.201.{k // 250}.{k % 250 + 1}"
            t0 = time.perf_counter()
            ipr.addr("add", index=eth0, address=address, prefixlen=32)
            while True:
                event = q.get(timeout=10)
                if any(address + "/32" in e["data"].get("addresses", ()) for e in event.get("changed", ())):
                    latencies.append(time.perf_counter() - t0)
                    break
        for ipr in sockets.values():
            ipr.close()
    finally:
        watcher.stop()
    import resource
    return latencies, startup, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,500")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=60, help="address changes timed through the watcher (0: none)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time `snapshot --json` of another copy of the code, side by side: DIR "
                             "holds it as DIR/bridgescope (e.g. `git archive REV | tar -x -C DIR/bridgescope`)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark builds network namespaces", file=sys.stderr)
        return 1
    prefix = "bsb" + secrets.token_hex(2)
    plot = plotnetcfg_argv()
    compile_bytecode(package_root())
    baseline_env = {**os.environ, "PYTHONPATH": args.baseline} if args.baseline else None
    if args.baseline:
        compile_bytecode(os.path.join(args.baseline, "bridgescope"))
    print(f"prefix {prefix}; namespaces already on the machine: {len(os.listdir('/run/netns'))}")
    header = ("N", "namespaces seen", "ours --json", "ours --no-firewall", "iproute2 loop", "plotnetcfg", "loop/ours (fw / no-fw)",
              "ours/plotnetcfg", "CPU ours / plotnetcfg", "baseline --json (wall / CPU)", "RSS MiB", "delta p50 ms",
              "delta p95 ms", "watch start s")
    print(" | ".join(header))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            host = build(prefix, n)
            cli = BRIDGESCOPE + ["snapshot", "--json", "--netns", host]
            ours, rss, ours_cpu = best(lambda cli=cli: timed_child(cli), args.runs)
            fast, _, _ = best(lambda cli=cli: timed_child(cli + ["--no-firewall"]), args.runs)
            base, _, base_cpu = best(lambda cli=cli: timed_child(cli, baseline_env), args.runs) if args.baseline else (
                float("nan"), 0, float("nan"))
            loop, _, _ = best(iproute2_loop, 1)
            plot_s, _, plot_cpu = best(lambda: retried(lambda: timed_child(plot)), args.runs) if plot else (
                float("nan"), 0, float("nan"))
            seen = len(discover())
            lat, startup, _ = delta_latency(host, prefix, n, args.changes) if args.changes else ([float("nan")], 0.0, 0)
            print(" | ".join([
                str(n), str(seen), f"{ours:.3f}", f"{fast:.3f}", f"{loop:.3f}", f"{plot_s:.3f}", f"{loop / ours:.1f}x / {loop / fast:.1f}x",
                f"{ours / plot_s:.2f}x / {fast / plot_s:.2f}x", f"{ours_cpu:.3f} / {plot_cpu:.3f} s",
                f"{base:.3f} / {base_cpu:.3f} s", f"{rss / 1024:.0f}",
                f"{statistics.median(lat) * 1000:.1f}", f"{percentile(lat, 95) * 1000:.1f}", f"{startup:.2f}",
            ]), flush=True)
            teardown(prefix)
    finally:
        teardown(prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
