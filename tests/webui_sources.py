"""Topology sources for web UI tests that do not need the live Watcher.

`StaticSource` serves a fixed Snapshot (made by the real collector or built from the model)
through the same surface as the Watcher: snapshot, elements, version, subscribe/unsubscribe,
refresh. `publish()` pushes an event to every subscriber, so the SSE plumbing can be tested
deterministically.
"""
from __future__ import annotations

import queue

from bridgescope.collector.live.fanout import GraphFanout
from bridgescope.collector.model import Snapshot
from bridgescope.collector.render.graph import diff_elements, to_elements


class StaticSource:
    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self.elements = to_elements(snapshot)
        self.version = 1
        self.refreshed: list[str | None] = []
        self._fanout = GraphFanout()

    def subscribe(self) -> queue.Queue:
        return self._fanout.subscribe(self.version, self.elements)

    def unsubscribe(self, q: queue.Queue) -> None:
        self._fanout.unsubscribe(q)

    @property
    def subscribers(self) -> int:
        return len(self._fanout)

    def refresh(self, ns_id: str | None = None) -> None:
        self.refreshed.append(ns_id)

    def replace(self, snapshot: Snapshot) -> dict:
        """Switch to a new snapshot and publish the delta, as the Watcher does."""
        new = to_elements(snapshot)
        delta = {"type": "delta", "version": self.version + 1, **diff_elements(self.elements, new)}
        self.snapshot, self.elements, self.version = snapshot, new, self.version + 1
        self.publish(delta)
        return delta

    def publish(self, event: dict) -> None:
        self._fanout.publish(event, self.elements)

    def stop(self) -> None:
        self._fanout.close()


def sample_snapshot() -> Snapshot:
    """A small host as Docker leaves it: docker0, one container with a published port."""
    from bridgescope.collector.model import Interface, Masquerade, Namespace, PortForward, Route, Rule

    host, ctr = "ns-1001", "ns-2002"
    rules = (
        Rule(host, "nft", 4, "nat", "DOCKER", "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 "
             "-j DNAT --to-destination 172.17.0.2:80", owner="docker", packets=7, bytes=420),
        Rule(host, "nft", 4, "nat", "POSTROUTING", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 "
             "-j MASQUERADE", owner="docker", packets=3, bytes=180),
        Rule(host, "nft", 4, "filter", "FORWARD", "-A FORWARD -o docker0 -j DOCKER", owner="docker"),
        Rule(host, "nft", 4, "nat", "POSTROUTING", "-A POSTROUTING -s 172.17.0.20/32 -j MASQUERADE",
             owner="unknown"),
    )
    return Snapshot(
        namespaces=(Namespace(host, "host", 1001, is_host=True,
                              sysctls=(("net.ipv4.ip_forward", "1"),)),
                    Namespace(ctr, "web", 2002, paths=("/run/netns/web",), pids=(42,))),
        interfaces=(
            Interface(f"{host}/if1", host, "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",)),
            Interface(f"{host}/if2", host, "eth0", 2, "physical", "up", 1500, "52:54:00:00:00:01",
                      ("192.0.2.2/24",)),
            Interface(f"{host}/if3", host, "docker0", 3, "bridge", "up", 1500, "02:42:00:00:00:01",
                      ("172.17.0.1/16",)),
            Interface(f"{host}/if4", host, "veth1a2b3c", 4, "veth", "up", 1500, "aa:00:00:00:00:04",
                      master=f"{host}/if3", peer=f"{ctr}/if2"),
            Interface(f"{ctr}/if1", ctr, "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",)),
            Interface(f"{ctr}/if2", ctr, "eth0", 2, "veth", "up", 1500, "02:42:ac:11:00:02",
                      ("172.17.0.2/16",), peer=f"{host}/if4"),
        ),
        routes=(Route(host, "default", "192.0.2.1", "eth0", f"{host}/if2"),
                Route(host, "172.17.0.0/16", None, "docker0", f"{host}/if3"),
                Route(ctr, "default", "172.17.0.1", "eth0", f"{ctr}/if2")),
        rules=rules,
        port_forwards=(PortForward(host, "tcp", None, 8080, "172.17.0.2", 80, "docker", "nft",
                                   container=ctr, to_interface=f"{ctr}/if2", chain="DOCKER",
                                   rule_text=rules[0].text),),
        masquerades=(Masquerade(host, "172.17.0.0/16", "docker0", "docker", "nft",
                                rule_text=rules[1].text),),
        host=host,
    )
