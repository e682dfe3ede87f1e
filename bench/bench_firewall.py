"""Benchmark the firewall collector (issue 3). Run as root: `python bench/bench_firewall.py`.

Everything happens in namespaces this script creates (prefix bsbfw<pid>) and removes, even
on failure. Figures:
  1. 5,000 DNAT rules in one namespace, per backend (legacy, nft, native nftables): full
     read + parse + interpretation (scan + interpret) against the bare save subprocess on
     the same rules (the ratio; target <= 2x), cold (parse cache empty) and warm (rules
     unchanged since the previous read, the watcher's normal case).
  2. python-iptables reading the same legacy table, in a child process that setns's into the
     namespace before `import iptc` (it must never run in the real host namespace).
  3. 200 namespaces with Docker 29's 15 rules each: total scan time, against running the
     same save commands one after another; and the cost of watching them (FirewallWatch's
     netlink subscriptions against one `nft monitor` process per namespace).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bridgescope.collector import firewall
from bridgescope.collector.firewall import readers
from bridgescope.collector.firewall.monitor import FirewallWatch
from bridgescope.collector.firewall.savefmt import parse_body
from bridgescope.collector.rules import nat
from bridgescope.collector.rules.nat import interpret

PREFIX = f"bsbfw{os.getpid()}"
DOCKER29 = Path(__file__).resolve().parent.parent / "tests" / "data" / "firewall" / "docker29.rules"
RUNS = 5


def run(*argv: str, ns: str | None = None, input: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(cmd, input=input, capture_output=True, text=True, check=True).stdout


def rules_5000() -> str:
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", ":BENCH - [0:0]",
             "-A PREROUTING -m addrtype --dst-type LOCAL -j BENCH"]
    for i in range(4999):
        a, b = divmod(i, 250)
        lines.append(f'-A BENCH -d 198.51.{a}.{b + 1}/32 -i br-bench -p tcp -m tcp --dport {10000 + i} '
                     f'-m comment --comment "bench:r{i}" -j DNAT --to-destination 10.99.{a}.{b + 1}:80')
    return "\n".join(lines + ["COMMIT", ""])


def nft_5000() -> str:
    body = [f"    ip daddr 198.51.{a}.{b + 1} iifname \"br-bench\" tcp dport {10000 + i} "
            f"dnat to 10.99.{a}.{b + 1}:80 comment \"bench:r{i}\""
            for i in range(4999) for a, b in [divmod(i, 250)]]
    return "\n".join(["table ip bench {", "  chain pre {",
                      "    type nat hook prerouting priority -100; policy accept;",
                      "    fib daddr type local jump b", "  }", "  chain b {", *body, "  }", "}", ""])


def timed(fn, runs: int = RUNS, setup=None) -> tuple[float, float]:
    """Median wall time and median CPU time (this process, all threads, plus the children
    it waited for) of fn, after an untimed setup(). Other engineers' tests load the machine,
    so CPU time is the steadier figure; wall time is what a user waits."""
    walls, cpus = [], []
    for _ in range(runs):
        if setup is not None:
            setup()
        before = _cpu()
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - before)
    return statistics.median(walls), statistics.median(cpus)


def _cpu() -> float:
    own = os.times()
    return own.user + own.system + own.children_user + own.children_system


def full_read(ns: str) -> int:
    scan = firewall.scan({ns: f"/run/netns/{ns}"}, reuse=True)  # as the Watcher reads
    view = interpret(scan.rules, scan.chains, (), ())
    return len(view.port_forwards)


def forget_everything() -> None:
    """Empty every cache of the read, so the next one is a first snapshot's. Untimed: a first
    snapshot has no previous read to free (5,000 rules and forwards, ~10 ms)."""
    parse_body.cache_clear()
    firewall.assemble_namespace.cache_clear()
    readers.forget_reads()
    nat.forget()


def bench_backend(name: str, ns: str, baseline: list[str]) -> dict:
    forwards = full_read(ns)
    base, base_cpu = timed(lambda: run("nsenter", f"--net=/run/netns/{ns}", "--", *baseline))
    cold_t, cold_cpu = timed(lambda: full_read(ns), setup=forget_everything)
    warm_t, warm_cpu = timed(lambda: full_read(ns))
    print(f"  {name:9s} {forwards} forwards; bare `{' '.join(baseline)}`: wall {base * 1000:.0f} ms, "
          f"cpu {base_cpu * 1000:.0f} ms")
    print(f"  {'':9s} full read cold: wall {cold_t * 1000:.0f} ms ({cold_t / base:.1f}x), "
          f"cpu {cold_cpu * 1000:.0f} ms ({cold_cpu / base_cpu:.1f}x) | warm: wall "
          f"{warm_t * 1000:.0f} ms ({warm_t / base:.1f}x), cpu {warm_cpu * 1000:.0f} ms "
          f"({warm_cpu / base_cpu:.1f}x)")
    return {"forwards": forwards, "base": base, "cold": cold_t, "warm": warm_t}


def iptc_child(ns_path: str, out) -> None:
    """In a fresh (spawned) process: join the namespace, THEN import iptc, then read."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(ns_path, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        out.send(("error", f"setns failed: errno {ctypes.get_errno()}"))
        return
    os.close(fd)
    import iptc
    start = time.perf_counter()
    table = iptc.Table(iptc.Table.NAT)
    count = 0
    for chain in table.chains:
        for rule in chain.rules:
            _ = ([(m.name, m.get_all_parameters()) for m in rule.matches],
                 rule.target.name, rule.target.get_all_parameters(), rule.src, rule.dst)
            count += 1
    out.send(("ok", time.perf_counter() - start, count))


def bench_iptc(ns: str) -> float | None:
    ctx = multiprocessing.get_context("spawn")
    samples = []
    for _ in range(3):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=iptc_child, args=(f"/run/netns/{ns}", child))
        proc.start()
        got = parent.recv() if parent.poll(120) else ("error", "timeout")
        proc.join(30)
        if got[0] != "ok":
            print(f"  python-iptables: {got[1]}")
            return None
        samples.append(got[1])
    value = statistics.median(samples)
    print(f"  python-iptables full decode of the legacy nat table ({got[2]} rules): {value * 1000:.0f} ms")
    return value


def bench_many(count: int) -> None:
    names = [f"{PREFIX}-m{i}" for i in range(count)]
    text = DOCKER29.read_text()
    for name in names:
        run("ip", "netns", "add", name)
        run("iptables-nft-restore", ns=name, input=text)
    paths = {n: f"/run/netns/{n}" for n in names}

    def serial_saves():
        for path in paths.values():
            for tool in (["iptables-nft-save", "-c"], ["ip6tables-nft-save", "-c"], ["nft", "list", "tables"]):
                subprocess.run(["nsenter", f"--net={path}", "--", *tool], capture_output=True)

    def scan_all():
        scan = firewall.scan(paths)
        assert len(scan.rules) == 15 * count, len(scan.rules)
        interpret(scan.rules, scan.chains, (), ())

    bench_watch(paths)
    base, base_cpu = timed(serial_saves, 3)
    total, total_cpu = timed(scan_all, 3, setup=forget_everything)
    print(f"  {count} namespaces x 15 rules: scan+interpret wall {total:.2f} s "
          f"({total / count * 1000:.1f} ms/namespace), cpu {total_cpu:.2f} s | the same tools "
          f"run one after another: wall {base:.2f} s, cpu {base_cpu:.2f} s | wall ratio "
          f"{total / base:.2f}x")


def bench_watch(paths: dict[str, str]) -> None:
    """FirewallWatch's netlink subscriptions vs one `nft monitor` process per namespace."""
    start = time.perf_counter()
    watch = FirewallWatch(paths, lambda ns_id: None)
    watch.start()
    while len(watch._sockets) + len(watch.errors) < len(paths):
        time.sleep(0.01)
    subscribed = time.perf_counter() - start
    watch.stop()
    start = time.perf_counter()
    monitors = [subprocess.Popen(["nsenter", f"--net={p}", "--", "nft", "monitor"],
                                 stdout=subprocess.DEVNULL) for p in paths.values()]
    spawned = time.perf_counter() - start
    time.sleep(1)  # let them initialise before reading their memory
    rss = sum(_rss_kb(m.pid) for m in monitors)
    for monitor in monitors:
        monitor.kill()
        monitor.wait()
    print(f"  watching {len(paths)} namespaces: netlink subscriptions {subscribed:.2f} s, "
          f"no processes | `nft monitor` per namespace: {spawned:.2f} s to start, "
          f"{rss / 1024:.0f} MB resident")


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def cleanup() -> None:
    for entry in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if entry.startswith(PREFIX):
            for pid in subprocess.run(["ip", "netns", "pids", entry], capture_output=True,
                                      text=True).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", entry], capture_output=True)


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (the benchmark builds network namespaces)", file=sys.stderr)
        return 1
    print(f"bridgescope firewall benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}; median of {RUNS} runs")
    try:
        legacy, nft, native = f"{PREFIX}-legacy", f"{PREFIX}-nft", f"{PREFIX}-native"
        for ns in (legacy, nft, native):
            run("ip", "netns", "add", ns)
        run("iptables-legacy-restore", ns=legacy, input=rules_5000())
        run("iptables-nft-restore", ns=nft, input=rules_5000())
        run("nft", "-f", "-", ns=native, input=nft_5000())
        print("5,000 DNAT rules in one namespace:")
        bench_backend("legacy", legacy, ["iptables-legacy-save", "-c"])
        bench_backend("nft", nft, ["iptables-nft-save", "-c"])
        bench_backend("nftables", native, ["nft", "-j", "list", "ruleset"])
        bench_iptc(legacy)
        print("many namespaces:")
        bench_many(200)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
