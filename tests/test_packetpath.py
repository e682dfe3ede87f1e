"""The packet path in the sandbox lab: the computed path names the right interfaces and rules,
and a real probe moves exactly the nat counters of those rules (forward, outbound, hairpin)."""
from __future__ import annotations

import secrets

import pytest

from bridgescope.collector.graph import masquerade_id, portforward_id
from bridgescope.collector.model import Rule
from bridgescope.collector.nateval import Context, Packet, matches, run_chain
from bridgescope.collector.packetpath import namespace_by_name, rule_key, trace_live
from bridgescope.plumbing.errors import ValidationError
from conftest import sh


# --- pure: the nat interpreter -----------------------------------------------------------

def nat_rule(chain: str, matches_: tuple, target: str, position: int, **target_args) -> Rule:
    return Rule("ns-1", "nft", 4, "nat", chain, f"-A {chain} ... -j {target}", matches=matches_,
                target=target, position=position,
                target_args=tuple((f"--{k.replace('_', '-')}", v) for k, v in target_args.items()))


PKT = Packet("198.51.100.2", "192.0.2.2", "tcp", 8080)
CTX = Context("uplink", None, frozenset({"192.0.2.2", "172.17.0.1"}))


def test_docker_style_chain_rewrites_the_destination_and_counts_the_jump():
    rules = (
        nat_rule("PREROUTING", (("-m", ("addrtype",), False), ("--dst-type", ("LOCAL",), False)), "DOCKER", 1),
        nat_rule("DOCKER", (("-i", ("docker0",), False),), "RETURN", 1),
        nat_rule("DOCKER", (("-i", ("docker0",), True), ("-p", ("tcp",), False),
                            ("--dport", ("8080",), False)), "DNAT", 2, to_destination="172.17.0.2:80"),
    )
    verdict = run_chain(rules, "PREROUTING", PKT, CTX)
    assert verdict.packet == Packet("198.51.100.2", "172.17.0.2", "tcp", 80)
    assert [r.position for r in verdict.matched] == [1, 2] and verdict.rewrite is rules[2]


def test_negated_interface_and_other_ports_do_not_match():
    dnat = nat_rule("PREROUTING", (("-i", ("uplink",), True),), "DNAT", 1, to_destination="10.0.0.1:80")
    assert not matches(dnat, PKT, CTX)
    multi = nat_rule("PREROUTING", (("-m", ("multiport",), False), ("--dports", ("80,443:450",), False)),
                     "DNAT", 1, to_destination="10.0.0.1:80")
    assert not matches(multi, PKT, CTX)
    assert matches(multi, Packet("1.2.3.4", "192.0.2.2", "tcp", 444), CTX)


def test_a_match_it_does_not_understand_never_matches():
    marked = nat_rule("POSTROUTING", (("-m", ("mark",), False), ("--mark", ("0x2000/0x2000",), False)),
                      "MASQUERADE", 1)
    assert not matches(marked, PKT, CTX)
    assert run_chain((marked,), "POSTROUTING", PKT, CTX).matched == ()


# --- kernel: the lab ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(run_prefix):
    from bridgescope.plumbing.lab import lab_down, lab_up
    prefix = f"{run_prefix}{secrets.token_hex(2)}"
    try:
        yield lab_up(prefix)
    finally:
        lab_down(prefix)


def lab_snapshot(lab):
    from bridgescope.plumbing.probe import lab_snapshot as read
    return read(lab.host, lab.prefix)


def ns_id(snap, name: str) -> str:
    ns = namespace_by_name(snap, name)
    assert ns is not None, name
    return ns.id


def iface_id(snap, ns_name: str, dev: str) -> str:
    nsid = ns_id(snap, ns_name)
    return next(i.id for i in snap.interfaces_in(nsid) if i.name == dev)


def probe_matches_path(lab, snap, source: str, dst: str, port: int):
    from bridgescope.plumbing.probe import send
    path = trace_live(snap, ns_id(snap, source), dst, port)
    result = send(lab.host, ns_id(snap, source), dst, port, prefix=lab.prefix)
    assert {rule_key(r) for r, _ in result.moved} == {rule_key(r) for r in path.rules}
    assert all(delta == 1 for _, delta in result.moved)  # one connection, one first packet
    return path, result


@pytest.mark.kernel
def test_forward_from_the_client_to_the_published_port(lab):
    snap = lab_snapshot(lab)
    c1 = f"{lab.host}-c1"
    path, result = probe_matches_path(lab, snap, lab.client, lab.host_ip, 8080)
    assert path.delivered_to == ns_id(snap, c1)
    assert path.final.dst == "172.17.0.2" and path.final.dport == 80
    assert path.final.src == lab.client_ip  # forwarded, not masqueraded
    pf = next(p for p in snap.port_forwards if p.netns == ns_id(snap, lab.host))
    for element in (iface_id(snap, lab.client, "uplink"), iface_id(snap, lab.host, "uplink"),
                    iface_id(snap, lab.host, "docker0"), iface_id(snap, c1, "eth0"), portforward_id(pf)):
        assert element in path.elements
    assert [r.target for r in path.rules if r.target == "DNAT"] == ["DNAT"]
    assert result.connected and result.reply == f"c1 saw {lab.client_ip}"


@pytest.mark.kernel
def test_outbound_from_a_container_is_masqueraded(lab):
    snap = lab_snapshot(lab)
    c1 = f"{lab.host}-c1"
    path, result = probe_matches_path(lab, snap, c1, lab.internet_ip, 80)
    assert path.delivered_to == ns_id(snap, lab.inet)
    assert path.final.src == lab.host_ip
    masq = [r for r in path.rules if r.target == "MASQUERADE"]
    assert len(masq) == 1 and "-s 172.17.0.0/16 ! -o docker0" in masq[0].text
    masq_node = next(m for m in snap.masquerades
                     if m.netns == ns_id(snap, lab.host) and m.rule_text == masq[0].text)
    assert masquerade_id(masq_node) in path.elements
    assert result.reply == f"internet saw {lab.host_ip}"


@pytest.mark.kernel
def test_hairpin_a_container_reaching_its_own_published_port(lab):
    snap = lab_snapshot(lab)
    c1 = f"{lab.host}-c1"
    path, result = probe_matches_path(lab, snap, c1, lab.host_ip, 8080)
    assert path.delivered_to == ns_id(snap, c1)
    assert any("back out of the port it came in on (hairpin mode on)" in s.text for s in path.steps)
    assert path.final.src == "172.17.0.1"
    assert result.reply == "c1 saw 172.17.0.1"


@pytest.mark.kernel
def test_without_the_dnat_jump_the_host_itself_answers_and_no_nat_counter_moves(netns, run_prefix):
    from bridgescope.plumbing.lab import lab_down, lab_up
    prefix = f"{run_prefix}{secrets.token_hex(2)}"
    try:
        lab = lab_up(prefix)
        sh("iptables", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL",
           "-m", "comment", "--comment", "bridgescope:jump", "-j", "BRIDGESCOPE-DNAT", ns=lab.host)
        snap = lab_snapshot(lab)
        path, result = probe_matches_path(lab, snap, lab.client, lab.host_ip, 8080)
        assert path.delivered_to == ns_id(snap, lab.host)
        assert path.rules == () and not result.connected
        assert result.reply == "Connection refused"
    finally:
        lab_down(prefix)


@pytest.mark.kernel
@pytest.mark.parametrize("dst,port,field", [("192.168.1.1", 80, "destination"),
                                            ("not-an-ip", 80, "destination"),
                                            ("203.0.113.10", 0, "port")])
def test_probes_never_leave_the_lab(lab, dst, port, field):
    from bridgescope.plumbing.probe import send
    snap = lab_snapshot(lab)
    with pytest.raises(ValidationError) as err:
        send(lab.host, ns_id(snap, f"{lab.host}-c1"), dst, port, prefix=lab.prefix)
    assert err.value.field == field


@pytest.mark.kernel
def test_probe_source_must_be_in_the_lab(lab):
    from bridgescope.plumbing.probe import send
    snap = lab_snapshot(lab)
    from bridgescope.collector.snapshot import collect
    outsider = next(n for n in collect(lab.host, firewall=False).namespaces
                    if not n.name.startswith(lab.prefix))
    with pytest.raises(ValidationError) as err:
        send(lab.host, outsider.id, lab.internet_ip, 80, prefix=lab.prefix)
    assert err.value.field == "source"


@pytest.mark.kernel
def test_hairpin_off_the_path_stops_at_the_bridge_and_the_doctor_says_so(run_prefix):
    from bridgescope.collector.doctor import diagnose
    from bridgescope.plumbing.lab import lab_down, lab_up
    from bridgescope.plumbing.probe import send
    prefix = f"{run_prefix}{secrets.token_hex(2)}"
    try:
        lab = lab_up(prefix)
        snap = lab_snapshot(lab)
        c1 = f"{lab.host}-c1"
        port = next(i for i in snap.interfaces_in(ns_id(snap, lab.host))
                    if i.peer == iface_id(snap, c1, "eth0"))
        sh("ip", "-n", lab.host, "link", "set", port.name, "type", "bridge_slave", "hairpin", "off")
        snap = lab_snapshot(lab)
        assert [f.id for f in diagnose(snap)] == ["hairpin-off"]
        path = trace_live(snap, ns_id(snap, c1), lab.host_ip, 8080)
        assert path.delivered_to is None and path.steps[-1].kind == "drop"
        assert "hairpin mode is off" in path.steps[-1].text
        result = send(lab.host, ns_id(snap, c1), lab.host_ip, 8080, prefix=lab.prefix)
        assert not result.connected  # the kernel agrees: the connection never completes
    finally:
        lab_down(prefix)
