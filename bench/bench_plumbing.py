"""Plumbing benchmarks: bridgescope vs the CNI reference plugins, and forward-add scaling.

1. 100 containers with one published port each: bridgescope's create_container vs CNI
   (bridge + host-local + portmap, invoked per container as a runtime does: env CNI_COMMAND=ADD
   etc., the network config on stdin, portmap given bridge's prevResult), each in its own
   throwaway host namespace, same machine, same script. Both sides create the container
   namespace the same way (pyroute2), so the difference is the plumbing itself.
2. Adding one forward with 10, 1,000 and 5,000 forwards already in place (median of runs),
   with `iptables-nft -A` of one rule at the same size as the baseline.

Run as root: .venv/bin/python bench/bench_plumbing.py [--containers 100] [--sizes 10,1000,5000]
Everything lives in namespaces named bsbench-<random>-*, removed at the end even on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bridgescope.plumbing import api, backends, netns, rules, state
from bridgescope.plumbing.rules import Change
from bridgescope.plumbing.state import Forward

CNI_BIN = "/usr/lib/cni"


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its waited-for children: unlike wall
    time, it barely moves when other work shares the machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def throwaway_host(tag: str) -> Iterator[str]:
    name = f"bsbench-{secrets.token_hex(3)}-{tag}"
    netns.create(name)
    try:
        yield name
    finally:
        for entry in sorted(os.listdir("/run/netns")):
            if entry == name or entry.startswith(name + "-") or entry.startswith(f"{name}c"):
                netns.destroy(entry)


def bench_ours(n: int) -> tuple[float, float]:
    with throwaway_host("ours") as host:
        start, cpu = time.perf_counter(), cpu_seconds()
        api.create_network("br0", "10.88.0.0/16", host=host, firewall="nft")
        for i in range(n):
            api.create_container(f"c{i}", "br0", ports=[f"{8000 + i}:80"], host=host, firewall="nft")
        return time.perf_counter() - start, cpu_seconds() - cpu


def _cni(plugin: str, host: str, env: dict, conf: dict) -> dict:
    res = subprocess.run(netns.nsenter(f"/run/netns/{host}", [f"{CNI_BIN}/{plugin}"]),
                         input=json.dumps(conf), capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"CNI {plugin} failed: {res.stdout or res.stderr}")
    return json.loads(res.stdout) if res.stdout.strip() else {}


def bench_cni(n: int) -> tuple[float, float]:
    with throwaway_host("cni") as host, tempfile.TemporaryDirectory() as data:
        bridge_conf = {"cniVersion": "1.0.0", "name": "benchnet", "type": "bridge",
                       "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                       "ipam": {"type": "host-local", "subnet": "10.88.0.0/16",
                                "dataDir": f"{data}/ipam", "routes": [{"dst": "0.0.0.0/0"}]}}
        start, cpu = time.perf_counter(), cpu_seconds()
        for i in range(n):
            ctr_ns = f"{host}c{i}"
            netns.create(ctr_ns)
            env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"bench{i:04d}",
                   "CNI_NETNS": f"/run/netns/{ctr_ns}", "CNI_IFNAME": "eth0",
                   "CNI_PATH": CNI_BIN}
            result = _cni("bridge", host, env, bridge_conf)
            _cni("portmap", host, env, {
                "cniVersion": "1.0.0", "name": "benchnet", "type": "portmap",
                "capabilities": {"portMappings": True}, "snat": True,
                "runtimeConfig": {"portMappings": [
                    {"hostPort": 8000 + i, "containerPort": 80, "protocol": "tcp"}]},
                "prevResult": result})
        return time.perf_counter() - start, cpu_seconds() - cpu


def _preload(host: str, size: int) -> None:
    """Put `size` forwards in place in one transaction (setup only, not measured): one network,
    one container, and its forwards, exactly as add_forward would have made them."""
    api.create_network("br0", "10.88.0.0/16", host=host, firewall="nft")
    api.create_container("web", "br0", host=host, firewall="nft")
    st = api.load_state(host)
    net, ctr = st.network("br0"), st.container("web")
    fwds = tuple(Forward("tcp", 10000 + i, 80, container="web") for i in range(size))
    added = tuple(r for f in fwds for r in rules.forward_rules(f, ctr, net))
    path = f"/run/netns/{host}"
    backends.apply("nft", path, Change(add=added), lambda: ())
    state.save(st.with_(forwards=st.forwards + fwds))


def _one_iptables_append(host: str, port: int) -> float:
    argv = ["iptables-nft", "-w", "-t", "nat", "-A", "BRIDGESCOPE-DNAT", "-p", "tcp", "--dport",
            str(port), "-j", "DNAT", "--to-destination", "10.88.0.2:80"]
    start = time.perf_counter()
    subprocess.run(netns.nsenter(f"/run/netns/{host}", argv), check=True)
    took = time.perf_counter() - start
    subprocess.run(netns.nsenter(f"/run/netns/{host}", [*argv[:4], "-D", *argv[5:]]), check=True)
    return took


def _add_rm(host: str, port: int) -> tuple[float, float, float]:
    """(wall time of the add, CPU time of the add, wall time of the remove)"""
    start, cpu = time.perf_counter(), cpu_seconds()
    api.add_forward("web", f"{port}:80", host=host)
    added, added_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    start = time.perf_counter()
    api.remove_forward("web", f"{port}:80", host=host)
    return added, added_cpu, time.perf_counter() - start


def bench_forward_add(size: int, runs: int) -> dict[str, float]:
    """Cold: the first add after someone else changed the ruleset (it re-reads the host's
    firewall for conflicts). Warm: later adds, when only bridgescope changed it since."""
    with throwaway_host(f"f{size}") as host:
        _preload(host, size)
        cold = _add_rm(host, 59999)[0]
        runs_ = [_add_rm(host, 60000 + k) for k in range(runs)]
        baseline = [_one_iptables_append(host, 61000 + k) for k in range(runs)]
        return {"cold": cold, "add": statistics.median(r[0] for r in runs_),
                "add_cpu": statistics.median(r[1] for r in runs_),
                "rm": statistics.median(r[2] for r in runs_),
                "iptables_A": statistics.median(baseline)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--sizes", default="10,1000,5000")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (builds network namespaces)", file=sys.stderr)
        return 1
    state_dir = tempfile.TemporaryDirectory(prefix="bsbench-state-")  # removed at exit
    os.environ["BRIDGESCOPE_STATE_DIR"] = state_dir.name
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {os.uname().release}")
    load = os.getloadavg()[0]
    (ours, ours_cpu), (cni, cni_cpu) = bench_ours(args.containers), bench_cni(args.containers)
    n = args.containers
    print(f"load average at start {load:.1f} (2 vCPUs; other work on the machine inflates wall time)")
    print(f"{n} containers + 1 forward each, wall: bridgescope {ours:.2f} s ({ours / n * 1000:.0f} ms "
          f"each), CNI bridge+host-local+portmap {cni:.2f} s ({cni / n * 1000:.0f} ms each), "
          f"ratio ours/CNI {ours / cni:.2f} (target <= 0.33)")
    print(f"{n} containers + 1 forward each, CPU: bridgescope {ours_cpu:.2f} s, CNI {cni_cpu:.2f} s, "
          f"ratio {ours_cpu / cni_cpu:.2f}")
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = {size: bench_forward_add(size, args.runs) for size in sizes}
    for size, f in figures.items():
        print(f"add 1 forward with {size:>5} in place: {f['add'] * 1000:6.1f} ms wall, "
              f"{f['add_cpu'] * 1000:5.1f} ms CPU (rm "
              f"{f['rm'] * 1000:6.1f} ms, cold first add {f['cold'] * 1000:6.1f} ms); baseline "
              f"one iptables-nft -A at that size {f['iptables_A'] * 1000:5.1f} ms")
    first, last = figures[sizes[0]]["add"], figures[sizes[-1]]["add"]
    cpu_growth = figures[sizes[-1]]["add_cpu"] / figures[sizes[0]]["add_cpu"]
    print(f"growth {sizes[0]} -> {sizes[-1]} forwards: x{last / first:.2f} wall, x{cpu_growth:.2f} CPU "
          f"(iptables-nft -A: x{figures[sizes[-1]]['iptables_A'] / figures[sizes[0]]['iptables_A']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
