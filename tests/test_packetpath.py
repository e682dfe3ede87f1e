"""The packet path in the sandbox lab: the computed path names the right interfaces and rules,
and a real probe moves exactly the nat counters of those rules (forward, outbound, hairpin)."""
from __future__ import annotations

import json
import secrets
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import sandbox_lab, sh

from bridgescope.collector.firewall import assemble
from bridgescope.collector.firewall.readers import NamespaceDump
from bridgescope.collector.kernel.routelookup import RouteAnswer
from bridgescope.collector.model import (
    Chain,
    Interface,
    Namespace,
    Rule,
    Snapshot,
    masquerade_id,
    portforward_id,
)
from bridgescope.collector.packetpath import namespace_by_name, rule_key, trace, trace_live
from bridgescope.collector.rules.evaluator import run_hook
from bridgescope.collector.rules.matcher import Packet, matches
from bridgescope.collector.rules.model import RuleSet
from bridgescope.collector.rules.nat import interpret
from bridgescope.plumbing.errors import ValidationError

DATA = Path(__file__).parent / "data" / "firewall"


# --- pure: the nat hook through the shared evaluator ---------------------------------------

def nat_rule(chain: str, matches_: tuple, target: str, position: int, **target_args) -> Rule:
    return Rule("ns-1", "nft", 4, "nat", chain, f"-A {chain} ... -j {target}", matches=matches_,
                target=target, position=position,
                target_args=tuple((f"--{k.replace('_', '-')}", v) for k, v in target_args.items()))


NAT_CHAINS = tuple(Chain("ns-1", "nft", 4, "nat", name, "ACCEPT", hook=name.lower(), hook_type="nat")
                   for name in ("PREROUTING", "POSTROUTING"))
PKT = Packet(4, "tcp", "192.0.2.2", 8080, src="198.51.100.2", iif="uplink", oif="",
             local=frozenset({"192.0.2.2", "172.17.0.1"}))


def run_nat(rules: tuple[Rule, ...], hook: str = "prerouting", packet: Packet = PKT):
    return run_hook(RuleSet(rules, NAT_CHAINS), "ns-1", hook, packet)


def test_docker_style_chain_rewrites_the_destination_and_counts_the_jump():
    rules = (
        nat_rule("PREROUTING", (("-m", ("addrtype",), False), ("--dst-type", ("LOCAL",), False)), "DOCKER", 1),
        nat_rule("DOCKER", (("-i", ("docker0",), False),), "RETURN", 1),
        nat_rule("DOCKER", (("-i", ("docker0",), True), ("-p", ("tcp",), False),
                            ("--dport", ("8080",), False)), "DNAT", 2, to_destination="172.17.0.2:80"),
    )
    run = run_nat(rules)
    assert (run.packet.src, run.packet.dst, run.packet.dport) == ("198.51.100.2", "172.17.0.2", 80)
    (_, chain_run), = run.runs
    assert [r.position for r in chain_run.matched] == [1, 2] and run.binding is rules[2]


def test_negated_interface_and_other_ports_do_not_match():
    dnat = nat_rule("PREROUTING", (("-i", ("uplink",), True),), "DNAT", 1, to_destination="10.0.0.1:80")
    assert matches(dnat, PKT) is False
    multi = nat_rule("PREROUTING", (("-m", ("multiport",), False), ("--dports", ("80,443:450",), False)),
                     "DNAT", 1, to_destination="10.0.0.1:80")
    assert matches(multi, PKT) is False
    assert matches(multi, replace(PKT, dport=444)) is True


def test_a_match_it_cannot_judge_rewrites_nothing_and_says_so():
    marked = nat_rule("POSTROUTING", (("-m", ("mark",), False), ("--mark", ("0x2000/0x2000",), False)),
                      "MASQUERADE", 1)
    assert matches(marked, PKT) is False  # the packet carries no mark
    opaque = nat_rule("POSTROUTING", (("nft", ('meta skuid 1000',), False),), "MASQUERADE", 1)
    run = run_nat((opaque,), "postrouting")
    assert matches(opaque, PKT) is None and run.verdict is None and run.packet == PKT


# --- pure: traces over a hand-built host (client -> host uplink, docker0 -> container) ---------

HOST, CTR, CLIENT = "ns-1", "ns-2", "ns-3"


def wired(rules: tuple[Rule, ...], chains: tuple[Chain, ...]) -> Snapshot:
    namespaces = (Namespace(HOST, "host", 1, is_host=True), Namespace(CTR, "c1", 2),
                  Namespace(CLIENT, "client", 3))
    interfaces = (
        Interface(f"{HOST}/if2", HOST, "eth0", 2, "veth", "up", 1500, None, ("192.0.2.10/24",),
                  peer=f"{CLIENT}/if2"),
        Interface(f"{HOST}/if3", HOST, "docker0", 3, "bridge", "up", 1500, None, ("172.17.0.1/16",)),
        Interface(f"{HOST}/if4", HOST, "veth1", 4, "veth", "up", 1500, None, master=f"{HOST}/if3",
                  peer=f"{CTR}/if2", hairpin=False),
        Interface(f"{CTR}/if2", CTR, "eth0", 2, "veth", "up", 1500, None, ("172.17.0.2/16",),
                  peer=f"{HOST}/if4"),
        Interface(f"{CLIENT}/if2", CLIENT, "eth0", 2, "veth", "up", 1500, None, ("192.0.2.2/24",),
                  peer=f"{HOST}/if2"),
    )
    nat = interpret(rules, chains, interfaces, namespaces)
    return Snapshot(namespaces, interfaces, (), rules, chains, nat.port_forwards, nat.masquerades, host=HOST)


def lookup(ns_id: str, dst: str, *, src: str | None = None, iif: int | None = None) -> RouteAnswer:
    """The routing tables of the hand-built host, as the kernel would answer."""
    if ns_id == CLIENT:
        return RouteAnswer("unicast", 2, None if dst.startswith("192.0.2.") else "192.0.2.10",
                           "192.0.2.2")
    if ns_id == HOST:
        if dst == "192.0.2.10":
            return RouteAnswer("local", 1, prefsrc=dst)
        return RouteAnswer("unicast", 3, prefsrc="172.17.0.1") if dst.startswith("172.17.") else \
            RouteAnswer("unicast", 2, prefsrc="192.0.2.10")
    return RouteAnswer("local", 1, prefsrc=dst) if dst == "172.17.0.2" else \
        RouteAnswer("unicast", 2, "172.17.0.1", "172.17.0.2")


def docker29_nftables(dports=None) -> tuple[tuple[Rule, ...], tuple[Chain, ...]]:
    """Docker 29's nftables listing; dports replaces the DNAT's `tcp dport 8080` (nft JSON)."""
    data = json.loads((DATA / "docker29-nftables.json").read_text())
    for obj in data["nftables"]:
        rule = obj.get("rule")
        for expr in rule["expr"] if rule and rule["chain"] == "nat-prerouting-and-output" else ():
            if dports is not None and expr.get("match", {}).get("left") == {
                    "payload": {"protocol": "tcp", "field": "dport"}}:
                expr["match"]["right"] = dports
    scan = assemble([NamespaceDump(HOST, (), (json.dumps(data),))])
    return scan.rules, scan.chains


def test_a_forward_through_native_nftables_nat_is_traced():
    snap = wired(*docker29_nftables())
    path = trace(snap, CLIENT, "192.0.2.10", 8080, lookup)
    assert path.delivered_to == CTR and (path.final.dst, path.final.dport) == ("172.17.0.2", 80)
    dnat = next(s for s in path.steps if s.kind == "nat")
    assert "DNAT 192.0.2.10:8080 -> 172.17.0.2:80" in dnat.text and "nat-PREROUTING" in dnat.text
    forward, = snap.port_forwards
    assert portforward_id(forward) in dnat.elements
    assert [r.target for r in dnat.rules] == ["nat-prerouting-and-output", "DNAT"]


def test_docker29_nftables_raw_chain_drops_direct_access_before_any_nat():
    """raw-PREROUTING (priority raw, -300) runs before the nat chains (-100)."""
    path = trace(wired(*docker29_nftables()), CLIENT, "172.17.0.2", 80, lookup)
    assert path.delivered_to is None and path.steps[-1].kind == "drop"
    assert "docker-bridges's raw-PREROUTING" in path.steps[-1].text
    assert "DROP DIRECT ACCESS" in path.steps[-1].verdict_rule.text


def docker_iptables_with_dports(dports: str) -> tuple[tuple[Rule, ...], tuple[Chain, ...]]:
    """Docker's nat rules with one DNAT for a port list, as the rule model spells it."""
    jump = Rule(HOST, "nft", 4, "nat", "PREROUTING", "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                matches=(("-m", ("addrtype",), False), ("--dst-type", ("LOCAL",), False)),
                target="DOCKER", position=1)
    dnat = Rule(HOST, "nft", 4, "nat", "DOCKER", f"-A DOCKER ! -i docker0 -p tcp --dports {dports} -j DNAT",
                matches=(("-i", ("docker0",), True), ("-p", ("tcp",), False),
                         ("-m", ("multiport",), False), ("--dports", (dports,), False)),
                target="DNAT", target_args=(("--to-destination", "172.17.0.2:80"),), position=1)
    chains = (Chain(HOST, "nft", 4, "nat", "PREROUTING", "ACCEPT", hook="prerouting", hook_type="nat"),
              Chain(HOST, "nft", 4, "nat", "DOCKER"))
    return (jump, dnat), chains


@pytest.mark.parametrize("rules_and_chains", [
    docker_iptables_with_dports("8000-8009,9000"),
    docker29_nftables({"set": [{"range": [8000, 8009]}, 9000]}),  # what nft lists as { 8000-8009, 9000 }
], ids=["dports-rule", "nft-set"])
def test_nat_interpretation_and_the_packet_path_read_a_port_list_alike(rules_and_chains):
    snap = wired(*rules_and_chains)
    assert sorted((f.host_port, f.host_port_end) for f in snap.port_forwards) == [(8000, 8009), (9000, None)]
    for port in (8000, 8005, 8009, 9000):
        path = trace(snap, CLIENT, "192.0.2.10", port, lookup)
        assert path.delivered_to == CTR and path.final.dst == "172.17.0.2", port
    assert trace(snap, CLIENT, "192.0.2.10", 8010, lookup).delivered_to == HOST  # not forwarded


def test_two_tables_at_one_priority_that_both_rewrite_are_unknown():
    """iptables-nft's nat table and Docker 29's nftables table both sit at dstnat (-100); which
    runs first depends on the order they were registered, which no listing shows."""
    nft_rules, nft_chains = docker29_nftables()
    ipt_rules, ipt_chains = docker_iptables_with_dports("8080")
    other = replace(ipt_rules[1], target_args=(("--to-destination", "172.17.0.3:80"),))
    snap = wired(nft_rules + (ipt_rules[0], other), nft_chains + ipt_chains)
    path = trace(snap, CLIENT, "192.0.2.10", 8080, lookup)
    assert path.delivered_to is None and path.steps[-1].kind == "unknown"
    assert "same hook and priority (-100)" in path.steps[-1].text
    same = replace(ipt_rules[1], target_args=(("--to-destination", "172.17.0.2:80"),))
    agreed = trace(wired(nft_rules + (ipt_rules[0], same), nft_chains + ipt_chains), CLIENT,
                   "192.0.2.10", 8080, lookup)
    assert agreed.delivered_to == CTR  # both bind alike: the order does not matter


# --- kernel: the lab ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(run_prefix):
    with sandbox_lab(run_prefix) as info:
        yield info


def lab_snapshot(lab):
    from bridgescope.plumbing.lab.probe import lab_snapshot as read
    return read(lab.host, lab.prefix)


def ns_id(snap, name: str) -> str:
    ns = namespace_by_name(snap, name)
    assert ns is not None, name
    return ns.id


def iface_id(snap, ns_name: str, dev: str) -> str:
    nsid = ns_id(snap, ns_name)
    return next(i.id for i in snap.interfaces_in(nsid) if i.name == dev)


def probe_matches_path(lab, snap, source: str, dst: str, port: int):
    from bridgescope.plumbing.lab.probe import send
    path = trace_live(snap, ns_id(snap, source), dst, port)
    result = send(lab.host, ns_id(snap, source), dst, port, prefix=lab.prefix)
    assert {rule_key(r) for r, _ in result.moved} == {rule_key(r) for r in path.rules}
    assert all(delta == 1 for _, delta in result.moved)  # one connection, one first packet
    assert (path.outcome[0] == "reachable") == result.connected, (path.outcome, result.reply)
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
def test_without_the_dnat_jump_the_path_ends_refused_on_the_host_as_the_probe_does(netns, run_prefix):
    from bridgescope.plumbing.lab.sandbox import lab_down, lab_up
    prefix = f"{run_prefix}{secrets.token_hex(2)}"
    try:
        lab = lab_up(prefix)
        sh("iptables", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL",
           "-m", "comment", "--comment", "bridgescope:jump", "-j", "BRIDGESCOPE-DNAT", ns=lab.host)
        snap = lab_snapshot(lab)
        path, result = probe_matches_path(lab, snap, lab.client, lab.host_ip, 8080)
        assert path.delivered_to is None and path.steps[-1].netns == ns_id(snap, lab.host)
        assert path.outcome == ("refused", f"refused: nothing listens on tcp/8080 in {lab.host}")
        assert path.rules == () and not result.connected
        assert result.reply == "Connection refused"
    finally:
        lab_down(prefix)


@pytest.mark.kernel
@pytest.mark.parametrize("dst,port,field", [("192.168.1.1", 80, "destination"),
                                            ("not-an-ip", 80, "destination"),
                                            ("203.0.113.10", 0, "port")])
def test_probes_never_leave_the_lab(lab, dst, port, field):
    from bridgescope.plumbing.lab.probe import send
    snap = lab_snapshot(lab)
    with pytest.raises(ValidationError) as err:
        send(lab.host, ns_id(snap, f"{lab.host}-c1"), dst, port, prefix=lab.prefix)
    assert err.value.field == field


@pytest.mark.kernel
def test_probe_source_must_be_in_the_lab(lab):
    from bridgescope.collector.kernel.snapshot import collect
    from bridgescope.plumbing.lab.probe import send
    outsider = next(n for n in collect(lab.host, firewall=False).namespaces
                    if not n.name.startswith(lab.prefix))
    with pytest.raises(ValidationError) as err:
        send(lab.host, outsider.id, lab.internet_ip, 80, prefix=lab.prefix)
    assert err.value.field == "source"


@pytest.mark.kernel
def test_hairpin_off_the_path_stops_at_the_bridge_and_the_doctor_says_so(run_prefix):
    from bridgescope.collector.doctor import diagnose
    from bridgescope.plumbing.lab.probe import send
    from bridgescope.plumbing.lab.sandbox import lab_down, lab_up
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


def test_a_delivered_packet_with_nothing_listening_ends_refused():
    """Arriving is not being answered: the path ends where the listener read says it does."""
    from bridgescope.collector.kernel.listeners import Listener, ListenerRead
    snap = wired(*docker29_nftables())
    deaf = ListenerRead({CTR: frozenset({Listener("tcp", "0.0.0.0", 81)})}, 1.0)
    path = trace(snap, CLIENT, "192.0.2.10", 8080, lookup, listeners=deaf)
    assert path.delivered_to is None and path.steps[-1].kind == "refused"
    assert path.outcome == ("refused", "refused: nothing listens on tcp/80 in c1")
    heard = ListenerRead({CTR: frozenset({Listener("tcp", "::", 80)})}, 1.0)
    assert trace(snap, CLIENT, "192.0.2.10", 8080, lookup, listeners=heard).outcome == ("reachable", "")
    unread = trace(snap, CLIENT, "192.0.2.10", 8080, lookup)
    assert unread.delivered_to == CTR and unread.outcome[0] == "unknown"
