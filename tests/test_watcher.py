"""The watcher against the real kernel: changes in throwaway namespaces arrive as deltas."""
from __future__ import annotations

import dataclasses
import queue
import socket
import time

import pytest
from conftest import sh

from bridgescope.collector.errors import NamespaceNotFound
from bridgescope.collector.live.watcher import HEAL_SLICE, Watcher

pytestmark = pytest.mark.kernel
WAIT = 30.0  # liveness bound on a busy shared machine, not a speed assertion


@pytest.fixture
def pair(netns):
    """host with br0 and one container c1 (eth0 10.50.0.2/24) on it; the watcher running."""
    host, c1 = netns("host"), netns("c1")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "link", "set", "br0", "up")
    sh("ip", "-n", host, "link", "add", "vc1", "type", "veth", "peer", "name", "eth0", "netns", c1)
    sh("ip", "-n", host, "link", "set", "vc1", "master", "br0", "up")
    sh("ip", "-n", c1, "link", "set", "eth0", "up")
    sh("ip", "-n", c1, "addr", "add", "10.50.0.2/24", "dev", "eth0")
    watcher = Watcher(host, firewall=False, rescan_interval=3600, heal_interval=3600).start()
    try:
        yield watcher, host, c1
    finally:
        watcher.stop()


def ns_id(watcher: Watcher, name: str) -> str:
    return next(ns.id for ns in watcher.snapshot.namespaces if ns.name == name)


def next_delta(q: queue.Queue, match) -> dict:
    """The first delta for which match(delta) holds (other namespaces may change meanwhile)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            event = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if event["type"] == "delta" and match(event):
            return event
    raise AssertionError("no matching delta arrived")


def ipv4(addresses: list[str]) -> list[str]:
    return [a for a in addresses if ":" not in a]  # link-local IPv6 arrives whenever DAD is done


def element(items: list[dict], **data) -> dict | None:
    return next((e for e in items if all(e["data"].get(k) == v for k, v in data.items())), None)


def test_first_event_is_the_whole_graph(pair):
    watcher, host, c1 = pair
    event = watcher.subscribe().get(timeout=WAIT)
    assert event["type"] == "graph" and event["version"] == watcher.version
    eth0 = element(event["elements"], label="eth0", parent=ns_id(watcher, c1))
    assert ipv4(eth0["data"]["addresses"]) == ["10.50.0.2/24"]


def test_address_change_is_one_changed_element(pair):
    watcher, host, c1 = pair
    q = watcher.subscribe()
    q.get()
    version = watcher.version
    sh("ip", "-n", c1, "addr", "add", "10.50.0.9/24", "dev", "eth0")
    eth0_id = element(watcher.elements, label="eth0", parent=ns_id(watcher, c1))["data"]["id"]
    has_new = lambda d: "10.50.0.9/24" in (element(d["changed"], id=eth0_id) or {"data": {"addresses": []}})["data"]["addresses"]
    delta = next_delta(q, has_new)
    assert ipv4(element(delta["changed"], id=eth0_id)["data"]["addresses"]) == ["10.50.0.2/24", "10.50.0.9/24"]
    assert delta["version"] > version and eth0_id not in delta["removed"]


def test_link_add_and_remove(pair):
    watcher, host, c1 = pair
    q = watcher.subscribe()
    q.get()
    sh("ip", "-n", host, "link", "add", "vnew", "type", "veth", "peer", "name", "eth1", "netns", c1)
    sh("ip", "-n", host, "link", "set", "vnew", "master", "br0")
    added = next_delta(q, lambda d: element(d["added"], label="eth1") is not None)
    eth1 = element(added["added"], label="eth1")
    assert eth1["data"]["parent"] == ns_id(watcher, c1) and "position" in eth1
    # the veth edge shows up once both ends are known
    snap = watcher.snapshot
    vnew = next(i for i in snap.interfaces if i.name == "vnew" and i.netns == snap.host)
    assert vnew.peer == eth1["data"]["id"]
    sh("ip", "-n", host, "link", "del", "vnew")
    removed: set[str] = set()  # the two ends may arrive in one delta or in two
    next_delta(q, lambda d: removed.update(d["removed"]) or {vnew.id, eth1["data"]["id"]} <= removed)


def test_new_and_deleted_namespace(netns):
    # A short rescan: a tool elsewhere on the machine (a concurrent test's watcher) may hold the
    # deleted namespace for a moment; the next rescan sees it gone. (A namespace that a process
    # keeps is renamed instead: test_incremental covers that outcome on its own.)
    host = netns("host")
    watcher = Watcher(host, firewall=False, rescan_interval=1.0, heal_interval=3600).start()
    try:
        q = watcher.subscribe()
        q.get()
        extra = netns("late")
        delta = next_delta(q, lambda d: element(d["added"], kind="namespace", label=extra) is not None)
        extra_id = element(delta["added"], label=extra)["data"]["id"]
        sh("ip", "netns", "del", extra)
        next_delta(q, lambda d: extra_id in d["removed"])
        assert all(ns.id != extra_id for ns in watcher.snapshot.namespaces)
    finally:
        watcher.stop()


def test_refresh_rereads_one_namespace_now(pair):
    watcher, host, c1 = pair
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", ns=host)
    watcher.refresh(ns_id(watcher, host))
    assert watcher.snapshot.namespace(ns_id(watcher, host)).sysctl("net.ipv4.conf.all.rp_filter") == "2"


def test_dropped_events_heal_with_a_full_redump(pair, monkeypatch):
    watcher, host, c1 = pair
    heals = []
    real_heal = watcher._heal
    monkeypatch.setattr(watcher, "_heal", lambda: (heals.append(1), real_heal()))
    c1_id = ns_id(watcher, c1)
    events = watcher._handles[c1_id].events  # shrink the buffer so the kernel must drop events
    events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
    q = watcher.subscribe()
    q.get()
    batch = "".join(f"addr add 10.60.{i // 250}.{i % 250 + 1}/32 dev eth0\n" for i in range(300))
    sh("ip", "-n", c1, "-b", "-", input=batch)
    eth0_id = element(watcher.elements, label="eth0", parent=c1_id)["data"]["id"]

    def complete(d):
        e = element(d["changed"], id=eth0_id)
        return e is not None and len(ipv4(e["data"]["addresses"])) == 301

    next_delta(q, complete)
    assert heals, "the kernel dropped events (ENOBUFS) but no full re-dump ran"


def test_missing_host_fails_before_starting(run_prefix):
    with pytest.raises(NamespaceNotFound):
        Watcher(f"{run_prefix}-nope")


@pytest.mark.slow
def test_firewall_change_arrives_as_nat_nodes(netns):
    """Rules written in the host: FirewallWatch notices, the watcher re-reads that namespace."""
    host, c1 = netns("fwhost"), netns("fwc1")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "addr", "add", "172.31.0.1/16", "dev", "br0")
    sh("ip", "-n", host, "link", "add", "vc1", "type", "veth", "peer", "name", "eth0", "netns", c1)
    sh("ip", "-n", host, "link", "set", "vc1", "master", "br0", "up")
    sh("ip", "-n", c1, "addr", "add", "172.31.0.2/16", "dev", "eth0")
    watcher = Watcher(host, firewall=True, rescan_interval=3600, heal_interval=3600).start()
    try:
        q = watcher.subscribe()
        q.get()
        rules = ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                 "-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 "
                 "-j DNAT --to-destination 172.31.0.2:80\n"
                 "-A POSTROUTING -s 172.31.0.0/16 ! -o br0 -j MASQUERADE\nCOMMIT\n")
        sh("iptables-nft-restore", ns=host, input=rules)
        host_id = watcher.snapshot.host
        pf_id = f"pf:{host_id}:tcp:*:8080"
        seen: set[str] = set()

        def both(d):
            seen.update(e["data"]["id"] for e in d["added"])
            return pf_id in seen and f"masq:{host_id}:172.31.0.0/16:br0" in seen

        next_delta(q, both)
        edge = element(watcher.elements, id=f"edge:{pf_id}")
        assert edge["data"]["target"] == element(watcher.elements, label="eth0", parent=ns_id(watcher, c1))["data"]["id"]
    finally:
        watcher.stop()


def test_a_deleted_link_applies_to_the_cached_dump_without_a_redump(netns):
    """The kernel announces RTM_DELLINK but not the routes that went with the link: applying
    the event must give what a fresh dump gives (the old code asked for a re-dump)."""
    import os

    from bridgescope.collector.kernel.netlink import (
        RTMGRP_TOPOLOGY,
        NetnsSocket,
        apply_events,
        new_route_socket,
    )
    from bridgescope.collector.kernel.setns import hop
    from bridgescope.collector.live.watcher import _drain_socket
    ns = netns("del")
    sh("ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    sh("ip", "-n", ns, "link", "set", "d0", "up")
    sh("ip", "-n", ns, "link", "set", "d1", "up")
    sh("ip", "-n", ns, "addr", "add", "10.61.0.1/24", "dev", "d0")
    sh("ip", "-n", ns, "route", "add", "10.62.0.0/24", "via", "10.61.0.2")
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        [(rtnl, events)] = hop([(fd, None)], lambda _: (NetnsSocket(new_route_socket()),
                                                              new_route_socket(RTMGRP_TOPOLOGY)))
        before = rtnl.dump()
        assert any(r.dst == "10.62.0.0/24" for r in before.routes)
        sh("ip", "-n", ns, "link", "del", "d0")
        time.sleep(0.2)
        applied = apply_events(before, _drain_socket(events))
        assert applied is not None
        assert applied[0] == rtnl.dump()
        rtnl.close()
        events.close()
    finally:
        os.close(fd)


def test_the_periodic_redump_comes_in_slices_and_sees_what_no_event_says(netns, monkeypatch):
    """route_localnet changes without a netlink event: the periodic re-dump finds it, a few
    namespaces at a time rather than all of them in one round that holds every change back."""
    host, c1 = netns("host"), netns("c1")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "link", "add", "vc1", "type", "veth", "peer", "name", "eth0", "netns", c1)
    sh("ip", "-n", host, "link", "set", "vc1", "master", "br0")
    watcher = Watcher(host, firewall=False, rescan_interval=3600, heal_interval=4.0)
    rounds: list[tuple[int, bool]] = []
    real_round = watcher._round
    monkeypatch.setattr(watcher, "_round", lambda **kw: (rounds.append((len(list(kw.get("reread", ()))),
                                                                         kw.get("full", False))),
                                                         real_round(**kw))[1])
    watcher.start()
    try:
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.conf.br0.route_localnet=1")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if watcher.snapshot.namespace(ns_id(watcher, host)).sysctl("net.ipv4.conf.br0.route_localnet") == "1":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the periodic re-dump never saw route_localnet change")
        everything = len(watcher.snapshot.namespaces)
        periodic = [n for n, full in rounds[1:] if n]
        assert periodic and max(periodic) < everything and not any(full for _, full in rounds)
        assert max(periodic) <= HEAL_SLICE  # a change waits behind a few namespaces' re-dump at most
    finally:
        watcher.stop()


def same_but_time(a, b) -> bool:
    return dataclasses.replace(a, taken_at=0) == dataclasses.replace(b, taken_at=0)


def test_a_redump_that_finds_nothing_new_keeps_the_picture(netns):
    """The doctor's worker reruns whenever the snapshot is another object: a heal slice that
    read only what was known must leave it as it was (an idle agent ran the doctor every second)."""
    host, c1 = netns("host"), netns("c1")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "link", "add", "vc1", "type", "veth", "peer", "name", "eth0", "netns", c1)
    sh("ip", "-n", host, "link", "set", "vc1", "master", "br0")
    watcher = Watcher(host, firewall=False, rescan_interval=3600, heal_interval=2.0).start()
    try:
        time.sleep(2.5)  # past the rechecks that follow the namespaces' creation (RECHECK_AFTER)
        # The watcher sees the whole machine: another run's namespaces coming and going make a
        # new picture rightly; a new picture that says what the last one said is the fault.
        for _ in range(5):
            before = watcher.snapshot
            time.sleep(3.5)  # more than a whole turn of slices over every namespace
            if watcher.snapshot is before:
                break
            assert not same_but_time(watcher.snapshot, before), "a re-read that found nothing new made a new picture"
        before = watcher.snapshot
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.conf.br0.route_localnet=1")
        deadline = time.monotonic() + WAIT
        while watcher.snapshot is before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watcher.snapshot is not before  # what no event says still comes through
    finally:
        watcher.stop()
