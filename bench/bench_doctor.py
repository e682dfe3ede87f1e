"""Benchmark: the doctor (`diagnose`) on a Docker-style host with N containers, each with a
published port, against building the graph elements (`to_elements`) of the same snapshot
- the other pure pass every dashboard update makes - as the baseline.

Pure: the snapshots are built in memory (no kernel, no root). Run:

    .venv/bin/python bench/bench_doctor.py [--sizes 50,200,1000] [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

from bridgescope.collector.doctor import diagnose
from bridgescope.collector.model import (
    Chain,
    Interface,
    Masquerade,
    Namespace,
    PortForward,
    Route,
    Rule,
    Snapshot,
)
from bridgescope.collector.render.graph import to_elements

HOST = "ns-1"


def container(i: int) -> tuple[Namespace, list[Interface], list[Route], list[Rule], PortForward]:
    ns_id = f"ns-{i + 10}"
    ip = f"172.17.{i // 250}.{i % 250 + 2}"
    ns = Namespace(ns_id, f"c{i}", i + 10, paths=(f"/run/netns/c{i}",))
    port = Interface(f"{HOST}/if{i + 10}", HOST, f"veth{i:07d}", i + 10, "veth", "up", 1500, None,
                     master=f"{HOST}/if3", peer=f"{ns_id}/if2", hairpin=False)
    inner = Interface(f"{ns_id}/if2", ns_id, "eth0", 2, "veth", "up", 1500, None, (f"{ip}/16",),
                      peer=port.id)
    lo = Interface(f"{ns_id}/if1", ns_id, "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",))
    routes = [Route(ns_id, "default", "172.17.0.1", "eth0"), Route(ns_id, "172.17.0.0/16", None, "eth0")]
    hport = 10000 + i
    dnat = Rule(HOST, "nft", 4, "nat", "DOCKER",
                f"-A DOCKER ! -i docker0 -p tcp -m tcp --dport {hport} -j DNAT --to-destination {ip}:80",
                matches=(("-i", ("docker0",), True), ("-p", ("tcp",), False), ("--dport", (str(hport),), False)),
                target="DNAT", target_args=(("--to-destination", f"{ip}:80"),), position=i + 1)
    accept = Rule(HOST, "nft", 4, "filter", "DOCKER",
                  f"-A DOCKER -d {ip}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
                  matches=(("-d", (f"{ip}/32",), False), ("-o", ("docker0",), False)), target="ACCEPT",
                  position=i + 1)
    pf = PortForward(HOST, "tcp", None, hport, ip, 80, "docker", "nft", container=ns_id,
                     to_interface=inner.id, chain="DOCKER", rule_text=dnat.text, forward_accept=True)
    return ns, [port, inner, lo], routes, [dnat, accept], pf


def snapshot(n: int) -> Snapshot:
    host = Namespace(HOST, "host", 1, is_host=True, sysctls=(("net.ipv4.ip_forward", "1"),
                                                             ("net.bridge.bridge-nf-call-iptables", "1")))
    namespaces, interfaces, routes, rules, forwards = [host], [
        Interface(f"{HOST}/if2", HOST, "eth0", 2, "physical", "up", 1500, None, ("192.0.2.10/24",)),
        Interface(f"{HOST}/if3", HOST, "docker0", 3, "bridge", "up", 1500, None, ("172.17.0.1/16",)),
    ], [Route(HOST, "default", "192.0.2.1", "eth0")], [], []
    masq = Rule(HOST, "nft", 4, "nat", "POSTROUTING", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                matches=(("-s", ("172.17.0.0/16",), False), ("-o", ("docker0",), True)), target="MASQUERADE")
    jump = Rule(HOST, "nft", 4, "filter", "FORWARD", "-A FORWARD -j DOCKER-FORWARD", target="DOCKER-FORWARD")
    outbound = Rule(HOST, "nft", 4, "filter", "DOCKER-FORWARD", "-A DOCKER-FORWARD -i docker0 -j ACCEPT",
                    matches=(("-i", ("docker0",), False),), target="ACCEPT")
    rules += [masq, jump, outbound]
    for i in range(n):
        ns, ifaces, rts, rls, pf = container(i)
        namespaces.append(ns)
        interfaces += ifaces
        routes += rts
        rules += rls
        forwards.append(pf)
    return Snapshot(tuple(namespaces), tuple(interfaces), tuple(routes), tuple(rules),
                    (Chain(HOST, "nft", 4, "filter", "FORWARD", policy="DROP", hook="forward"),),
                    tuple(forwards),
                    (Masquerade(HOST, "172.17.0.0/16", "docker0", "docker", "nft", chain="POSTROUTING",
                                rule_text=masq.text),), host=HOST)


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'containers':>10} {'diagnose':>10} {'to_elements':>12} {'ratio':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        snap = snapshot(n)
        findings = diagnose(snap)
        d = median_seconds(lambda snap=snap: diagnose(snap), args.runs)
        g = median_seconds(lambda snap=snap: to_elements(snap), args.runs)
        assert not findings, findings  # a healthy host: the work measured is the full check
        print(f"{n:>10} {d * 1000:>8.1f}ms {g * 1000:>10.1f}ms {d / g:>6.2f}x")


if __name__ == "__main__":
    main()
