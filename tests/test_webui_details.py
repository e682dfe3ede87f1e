"""The details panel and the tables: pure functions over a snapshot, and their routes."""
from __future__ import annotations

import pytest
from webui_sources import StaticSource, sample_snapshot

from bridgescope.webui.app import create_app
from bridgescope.webui.details import details_for, forward_for_id, rules_mentioning
from bridgescope.webui.tables import forward_rows, matching, rule_rows

BASE = "http://127.0.0.1:8470"


@pytest.fixture
def snap():
    return sample_snapshot()


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))
    return create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True}).test_client()


def test_container_interface_details(snap):
    d = details_for(snap, StaticSource(snap).elements, "ns-2002/if2", {})
    facts = dict(d.facts)
    assert (facts["MTU"], facts["MAC"], facts["addresses"]) == ("1500", "02:42:ac:11:00:02", "172.17.0.2/16")
    assert facts["state"] == "up" and facts["veth peer"] == "veth1a2b3c in host"
    assert [r.dst for r in d.routes] == ["default"]
    # The DNAT to 172.17.0.2 concerns it, with its counters; the rule for .20 does not.
    assert [(r.chain, r.packets) for r in d.rules] == [("DOCKER", 7)]
    assert [f.host_port for f in d.forwards] == [8080]
    assert "ip -n web addr show dev eth0" in d.commands


def test_bridge_details_include_its_masquerade(snap):
    d = details_for(snap, [], "ns-1001/if3", {})
    assert dict(d.facts)["kind"] == "bridge"
    assert any("MASQUERADE" in r.text and r.packets == 3 for r in d.rules)
    assert "bridge link show master docker0" in d.commands
    assert "iptables-nft-save" in d.commands


def test_namespace_and_forward_details(snap):
    ns = details_for(snap, StaticSource(snap).elements, "ns-2002", {"web": "web"})
    assert ns.container == "web" and [i.name for i in ns.interfaces] == ["lo", "eth0"]
    assert dict(ns.facts)["paths"] == "/run/netns/web"
    assert "iptables-nft-save" in ns.commands  # the DNAT lives in the host, listed there
    pf = details_for(snap, [], "pf:ns-1001:tcp:*:8080", {})
    assert pf.title == "tcp *:8080 → 172.17.0.2:80"
    assert dict(pf.facts)["container"] == "web" and pf.rules[0].packets == 7
    assert details_for(snap, [], "edge:pf:ns-1001:tcp:*:8080", {}).title == pf.title


def test_a_forward_held_twice_by_the_firewall_is_listed_once(snap):
    from dataclasses import replace
    doubled = replace(snap, port_forwards=snap.port_forwards * 2)
    assert len(details_for(doubled, [], "ns-2002", {}).forwards) == 1


def test_lookups_that_find_nothing(snap):
    assert details_for(snap, [], "ns-999/if1", {}) is None
    assert forward_for_id(snap, "pf:ns-1001:udp:*:8080") is None
    assert forward_for_id(snap, "pf:broken") is None


def test_rules_are_matched_on_whole_addresses_and_names(snap):
    found = rules_mentioning(snap.rules, {"ns-1001"}, ["172.17.0.2"])
    assert len(found) == 1 and "172.17.0.20" not in found[0].text
    assert rules_mentioning(snap.rules, {"ns-2002"}, ["172.17.0.2"]) == ()
    assert len(rules_mentioning(snap.rules, {"ns-1001"}, ["docker0"])) == 3


def test_details_route_renders_panel_or_page(client):
    frag = client.get("/details/ns-2002/if2", base_url=BASE, headers={"HX-Request": "true"})
    text = frag.get_data(as_text=True)
    assert frag.status_code == 200 and "<html" not in text and "02:42:ac:11:00:02" in text
    page = client.get("/details/ns-2002/if2", base_url=BASE).get_data(as_text=True)
    assert "<html" in page and "02:42:ac:11:00:02" in page
    missing = client.get("/details/ns-0/if0", base_url=BASE)
    assert missing.status_code == 404


def test_table_rows_and_filter(snap):
    rows = rule_rows(snap)
    assert {r.table for r in rows} == {"nat"} and len(rule_rows(snap, "all")) == 4
    assert [r.packets for r in matching(rows, "dnat 8080")] == [7]
    fw = forward_rows(snap)
    assert (fw[0].host, fw[0].to, fw[0].container) == ("*:8080", "172.17.0.2:80", "web")
    assert matching(fw, "udp") == []


def test_forward_rows_show_the_verdicts_of_the_panel():
    """From outside and from the host: the words of the forward's panel, from the one verdict
    (rules/reach.py) the doctor reads too."""
    from test_doctor import HOST, healthy, without_jumps
    from test_reach import LISTENING

    from bridgescope.collector.doctor import diagnose
    from bridgescope.collector.rules.reach import reach
    from bridgescope.webui.verdicts import Checkup, verdict_rows

    (row,) = forward_rows(healthy(), listeners=LISTENING)
    assert (row.outside, row.from_host, row.outside_class, row.from_host_class) == ("reachable", "reachable", "ok", "ok")
    broken = without_jumps(healthy(), "OUTPUT")
    (row,) = forward_rows(broken, listeners=LISTENING)
    assert row.outside == "reachable" and row.from_host_class == "warn"
    assert row.from_host.startswith("not reachable (refused): refused: no DNAT catches 192.0.2.10:8080")
    panel = dict(verdict_rows(Checkup(broken, (), reach(broken, LISTENING), LISTENING), f"pf:{HOST}:tcp:*:8080",
                              "portforward"))
    assert (panel["from outside"], panel["from the host"]) == (row.outside, row.from_host)
    assert [f.id for f in diagnose(broken, listeners=LISTENING)] == ["dnat-not-from-host"]
    (deaf,) = forward_rows(healthy(), listeners=None)  # listeners not read: not claimed reachable
    assert deaf.outside.startswith("not reachable (unknown)")


def test_a_port_bound_to_127_0_0_1_is_not_red_from_outside_and_the_host_column_asks_127_0_0_1():
    """`-p 127.0.0.1:8080:80` is published for the host's loopback only: outside's refusal is
    what it asks for, and the host reaches it at 127.0.0.1, not at its uplink address."""
    from dataclasses import replace

    from test_doctor import healthy
    from test_reach import LISTENING

    from bridgescope.collector.rules.reach import LOOPBACK, reach
    from bridgescope.webui.verdicts import verdict_text

    snap = healthy()
    snap = replace(snap, port_forwards=tuple(replace(pf, host_ip="127.0.0.1") for pf in snap.port_forwards))
    (row,) = forward_rows(snap, listeners=LISTENING)
    assert (row.outside, row.outside_class) == ("not published there (bound to 127.0.0.1)", "muted")
    (fr,) = reach(snap, LISTENING)
    assert row.from_host == verdict_text(fr.verdict(LOOPBACK))
    assert (row,) == tuple(forward_rows(snap, verdicts_of=(fr,)))  # the worker's verdicts, the same row


def test_tables_route_filters_and_swaps_only_the_tables(client):
    full = client.get("/tables/?q=masquerade", base_url=BASE).get_data(as_text=True)
    assert "<html" in full and "MASQUERADE" in full and "--to-destination" not in full
    frag = client.get("/tables/?q=8080&table=all", base_url=BASE, headers={"HX-Request": "true"})
    text = frag.get_data(as_text=True)
    assert "<html" not in text and 'id="rules-table"' in text and "--to-destination" in text
    assert "bogus" not in client.get("/tables/?table=bogus", base_url=BASE).get_data(as_text=True).split("Firewall rules (")[1][:10]


def test_listing_commands_follow_each_rules_backend_and_family():
    from bridgescope.collector.model import Namespace, Rule, Snapshot
    from bridgescope.webui.details import _save_commands

    host = Namespace("ns-1", "host", 1, is_host=True)
    snap = Snapshot(namespaces=(host,), host="ns-1")
    rules = [Rule("ns-1", "nft", 6, "nat", "POSTROUTING", "-A POSTROUTING -j MASQUERADE"),
             Rule("ns-1", "nft", 6, "nat", "PREROUTING", "-A PREROUTING -j DOCKER"),
             Rule("ns-1", "legacy", 4, "nat", "POSTROUTING", "-A POSTROUTING -j MASQUERADE"),
             Rule("ns-1", "nftables", 4, "docker-bridges", "nat-POSTROUTING", "masquerade")]
    commands = _save_commands(snap, rules)
    assert len(commands) == 3
    assert [c for c in commands if "ip6tables-nft-save" in c] and [c for c in commands if "iptables-legacy-save" in c]
    assert [c for c in commands if c.endswith("nft list ruleset")]
    assert not [c for c in commands if " iptables-nft-save" in c]  # no IPv4 listing for IPv6 rules


def test_a_ranged_forward_is_labelled_with_its_ranges():
    from bridgescope.collector.model import PortForward
    from bridgescope.webui.details import forward_label

    pf = PortForward("ns-1", "tcp", None, 8000, "10.88.0.14", 80, "podman", "nft",
                     host_port_end=8009, to_port_end=89)
    assert forward_label(pf) == "tcp *:8000-8009 → 10.88.0.14:80-89"


# ---- scoped by identity: two labs on one machine reuse the same addresses -----------------------

def two_labs():
    """The sample host plus a second lab's host and container with the same addresses and
    the same forward (as two `lab up` on one machine leave them), and shard scaffolding."""
    from dataclasses import replace

    from bridgescope.collector.model import Interface, Namespace, PortForward, Rule

    snap = sample_snapshot()
    other, ctr = "ns-3001", "ns-4002"
    dnat = snap.rules[0]
    rules = (replace(dnat, netns=other, packets=99),
             Rule(snap.host, "nft", 4, "nat", "BRIDGESCOPE-DNAT", "-A BRIDGESCOPE-DNAT -j BRIDGESCOPE-DNAT-0a",
                  owner="bridgescope", target="BRIDGESCOPE-DNAT-0a", comment="bridgescope:shard"))
    return replace(
        snap,
        namespaces=snap.namespaces + (Namespace(other, "lab2-host", 3001, paths=("/run/netns/lab2-host",)),
                                      Namespace(ctr, "lab2-c1", 4002, paths=("/run/netns/lab2-c1",))),
        interfaces=snap.interfaces + (
            Interface(f"{other}/if3", other, "docker0", 3, "bridge", "up", 1500, None, ("172.17.0.1/16",)),
            Interface(f"{other}/if4", other, "vethzz", 4, "veth", "up", 1500, None,
                      master=f"{other}/if3", peer=f"{ctr}/if2"),
            Interface(f"{ctr}/if2", ctr, "eth0", 2, "veth", "up", 1500, None, ("172.17.0.2/16",),
                      peer=f"{other}/if4")),
        rules=snap.rules + rules,
        port_forwards=snap.port_forwards + (PortForward(
            other, "tcp", None, 8080, "172.17.0.2", 80, "docker", "nft", container=ctr,
            to_interface=f"{ctr}/if2", chain="DOCKER", rule_text=dnat.text),))


def test_a_containers_panels_show_only_its_own_forward_and_rules():
    snap = two_labs()
    for element in ("ns-2002", "ns-2002/if2", "ns-1001/if4"):  # namespace, its eth0, the host end
        d = details_for(snap, [], element, {})
        assert [(f.netns, f.container) for f in d.forwards] == [("ns-1001", "ns-2002")], element
    eth0 = details_for(snap, [], "ns-2002/if2", {})
    assert [r.packets for r in eth0.rules] == [7]  # not the other lab's 99
    other = details_for(snap, [], "ns-4002", {})
    assert [(f.netns, f.container) for f in other.forwards] == [("ns-3001", "ns-4002")]
    assert [r.packets for r in other.rules] == [99]
    # the host lists the forwards its own firewall holds, not the other lab's
    assert [f.netns for f in details_for(snap, [], "ns-1001", {}).forwards] == ["ns-1001"]


def test_tables_list_the_served_host_unless_asked_and_hide_shard_jumps():
    from bridgescope.webui.tables import TableScope

    snap = two_labs()
    assert [f.namespace for f in forward_rows(snap)] == ["host"]
    assert sorted(f.namespace for f in forward_rows(snap, TableScope(every_namespace=True))) == ["host", "lab2-host"]
    assert {r.namespace for r in rule_rows(snap, "all")} == {"host"}
    assert not [r for r in rule_rows(snap, "all") if "BRIDGESCOPE-DNAT-0a" in r.text]
    assert [r for r in rule_rows(snap, "all", TableScope(scaffolding=True)) if "BRIDGESCOPE-DNAT-0a" in r.text]
    assert {r.namespace for r in rule_rows(snap, "all", TableScope(every_namespace=True))} == {"host", "lab2-host"}


def test_tables_route_toggles(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))
    c = create_app({"SOURCE": StaticSource(two_labs()), "NO_AUTH": True}).test_client()
    served = c.get("/tables/?table=all", base_url=BASE).get_data(as_text=True)
    assert "lab2-host" not in served.split('id="forwards-table"')[1] and "BRIDGESCOPE-DNAT-0a" not in served
    every = c.get("/tables/?table=all&every=1&scaffolding=1", base_url=BASE).get_data(as_text=True)
    assert "lab2-host" in every.split('id="forwards-table"')[1] and "BRIDGESCOPE-DNAT-0a" in every


def test_a_bridges_panel_lists_its_ports_containers_and_forwards():
    snap = two_labs()
    d = details_for(snap, [], "ns-1001/if3", {})
    assert [(p.name, far.netns) for p, far in d.ports] == [("veth1a2b3c", "ns-2002")]
    assert [(f.netns, f.container) for f in d.forwards] == [("ns-1001", "ns-2002")]


def test_the_masquerade_panel_reads_like_the_forward_panel(snap, client):
    elements = StaticSource(snap).elements
    masq = next(e["data"]["id"] for e in elements if e["data"].get("kind") == "masquerade")
    d = details_for(snap, elements, masq, {})
    facts = dict(d.facts)
    assert d.kind == "masquerade" and (facts["source"], facts["owner"], facts["backend"]) == ("172.17.0.0/16", "docker", "nft")
    assert facts["leaving by"] == "any interface but docker0" and facts["bridge"] == "docker0"
    assert [r.packets for r in d.rules] == [3]  # its own counters, not the .20 rule's
    assert "iptables-nft -t nat -L POSTROUTING -v -n --line-numbers" in d.commands
    html = client.get(f"/details/{masq}", base_url=BASE, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "is_host" not in html and "3 packets" in html and "-A POSTROUTING -s 172.17.0.0/<wbr>16" in html


def test_commands_wrap_only_between_words_or_after_slashes_and_commas():
    from bridgescope.webui.details import wrap_points

    assert str(wrap_points("ip -n a addr 10.0.0.1/24 <x>,y")) == "ip -n a addr 10.0.0.1/<wbr>24 &lt;x&gt;,<wbr>y"


@pytest.mark.kernel
def test_an_open_panels_counters_are_read_again_from_the_kernel(netns):
    """The snapshot's counters are as old as the last rule change; the panel's are current."""
    from dataclasses import replace

    from conftest import sh

    from bridgescope.collector.kernel.namespaces import discover, resolve_netns
    from bridgescope.collector.kernel.snapshot import scan
    from bridgescope.webui.details import with_fresh_counters

    name = netns("ctr")
    sh("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.9.0/24", "-j", "MASQUERADE", ns=name)
    snap = scan([n for n in discover(resolve_netns(name)) if n.name == name])
    rule = next(r for r in snap.rules if "10.9.9.0/24" in r.text)
    assert rule.packets == 0
    sh("iptables-nft", "-t", "nat", "-R", "POSTROUTING", "1", "-s", "10.9.9.0/24", "-j", "MASQUERADE",
       "-c", "5", "300", ns=name)  # as if five packets had matched since the snapshot
    d = details_for(snap, [], rule.netns, {})
    d = replace(d, rules=(rule,))
    assert [(r.packets, r.bytes) for r in with_fresh_counters(snap, d).rules] == [(5, 300)]


def test_an_open_panel_asking_about_a_gone_element_gets_no_content(client):
    assert client.get("/details/ns-999", base_url=BASE).status_code == 404
    assert client.get("/details/ns-999?follow=1", base_url=BASE, headers={"HX-Request": "true"}).status_code == 204
