"""The reachability verdict as a pure function: the healthy Docker host of test_doctor, broken
in one ingredient at a time (NAT, FORWARD on each backend, ip_forward, link state, routes,
the listener), must give exactly that reason for the sources it concerns."""
from __future__ import annotations

from dataclasses import replace

import pytest
from test_doctor import CTR, HOST, healthy, with_iface

from bridgescope.collector.kernel.listeners import Listener, ListenerRead
from bridgescope.collector.model import Chain
from bridgescope.collector.rules import reach as r

LISTENING = ListenerRead({CTR: frozenset({Listener("tcp", "0.0.0.0", 80)}), HOST: frozenset()}, 100.0)
DEAF = ListenerRead({CTR: frozenset({Listener("tcp", "0.0.0.0", 8081)}), HOST: frozenset()}, 100.0)


def verdicts(snap, listeners=LISTENING) -> dict[str, r.Verdict]:
    (fr,) = r.reach(snap, listeners)
    return {v.source: v for v in fr.verdicts}


def test_healthy_host_is_reachable_from_outside_and_from_itself():
    v = verdicts(healthy())
    assert v["outside"].ok and v["host"].ok, v
    assert v["loopback"].outcome == r.REFUSED  # Docker's OUTPUT jump skips 127.0.0.0/8
    # the DNAT says `! -i docker0`: a neighbour's connection is docker-proxy's to answer
    assert (v["container"].outcome, v["container"].cause) == (r.REFUSED, "nat-unreached")
    proxy = ListenerRead({**LISTENING.by_ns, HOST: frozenset({Listener("tcp", "::", 8080)})}, 1.0)
    assert verdicts(healthy(), proxy)["container"].cause == "host-listener"


def test_nothing_listening_is_refused_for_every_source_that_gets_there():
    v = verdicts(healthy(), DEAF)
    assert v["outside"].outcome == r.REFUSED
    assert v["outside"].reason == "refused: nothing listens on tcp/80 in bstX-c1"
    assert v["host"].cause == "no-listener"


def test_listeners_not_read_is_unknown_not_reachable():
    v = verdicts(healthy(), None)
    assert v["outside"].outcome == r.UNKNOWN and v["outside"].cause == "listener-unknown"


def test_dnat_without_a_jump_is_refused():
    snap = healthy()
    snap = replace(snap, rules=tuple(x for x in snap.rules if x.chain not in ("PREROUTING", "OUTPUT")))
    v = verdicts(snap)
    assert v["outside"].outcome == r.REFUSED and v["outside"].cause == "nat-unreached"
    assert "nothing jumps from PREROUTING to chain DOCKER" in v["outside"].reason
    assert v["host"].cause == "nat-unreached"


def test_only_the_prerouting_jump_leaves_the_host_itself_refused():
    snap = healthy()
    v = verdicts(replace(snap, rules=tuple(x for x in snap.rules if x.chain != "OUTPUT")))
    assert v["outside"].ok
    assert v["host"].cause == "nat-unreached"


def test_ip_forward_off_times_out_from_outside_not_from_the_host():
    snap = healthy()
    host = replace(snap.namespaces[0], sysctls=(("net.ipv4.ip_forward", "0"),))
    v = verdicts(replace(snap, namespaces=(host, snap.namespaces[1])))
    assert (v["outside"].outcome, v["outside"].cause) == (r.TIMEOUT, "ip-forward-off")
    assert v["host"].ok  # the host's own packets are not forwarded


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_forward_drop_names_the_table(backend):
    snap = healthy()
    rules = tuple(x for x in snap.rules if x.table != "filter")
    chains = tuple(c for c in snap.chains if c.table != "filter") + (
        Chain(HOST, backend, 4, "filter", "FORWARD", policy="DROP", hook="forward"),)
    v = verdicts(replace(snap, rules=rules, chains=chains))
    assert (v["outside"].outcome, v["outside"].cause) == (r.TIMEOUT, "forward-drop")
    tool = {"nft": "iptables-nft", "legacy": "iptables-legacy"}[backend]
    assert f"the {tool} filter table's FORWARD chain (its policy DROP)" in v["outside"].reason


def test_a_drop_in_another_backend_decides_although_one_accepts():
    snap = healthy()
    chains = snap.chains + (Chain(HOST, "legacy", 4, "filter", "FORWARD", policy="DROP", hook="forward"),)
    v = verdicts(replace(snap, chains=chains))
    assert v["outside"].cause == "forward-drop" and "iptables-legacy" in v["outside"].reason


@pytest.mark.parametrize("if_id", [f"{HOST}/if3", f"{HOST}/if4", f"{CTR}/if2"])
def test_a_link_down_on_the_way_times_out(if_id):
    v = verdicts(with_iface(healthy(), if_id, state="down"))
    assert (v["outside"].outcome, v["outside"].cause) == (r.TIMEOUT, "link-down")
    assert v["host"].cause == "link-down"


def test_no_route_back_to_an_outside_client():
    snap = healthy()
    snap = replace(snap, routes=tuple(x for x in snap.routes if not (x.netns == CTR and x.dst == "default")))
    v = verdicts(snap)
    assert (v["outside"].outcome, v["outside"].cause) == (r.TIMEOUT, "no-route")
    assert v["host"].ok  # the host connects from the bridge's address, on the container's network


def test_a_forward_whose_container_is_gone_times_out():
    snap = healthy()
    snap = replace(snap, port_forwards=(replace(snap.port_forwards[0], container=None, to_interface=None),))
    assert verdicts(snap)["outside"].cause == "no-container"


def test_namespaces_to_poll_are_the_host_and_the_forwards_containers():
    assert r.namespaces_to_poll(healthy()) == frozenset({HOST, CTR})


def test_the_doctor_says_when_nothing_listens_and_only_when_it_read_the_sockets():
    from bridgescope.collector.doctor import diagnose
    snap = healthy()
    assert [f.id for f in diagnose(snap, listeners=DEAF)] == ["nothing-listens"]
    assert "nothing listens on tcp/80 in bstX-c1" in diagnose(snap, listeners=DEAF)[0].title
    assert diagnose(snap, listeners=LISTENING) == () and diagnose(snap) == ()
