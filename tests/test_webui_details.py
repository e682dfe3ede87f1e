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
    assert (fw[0].host, fw[0].to, fw[0].container, fw[0].status) == ("*:8080", "172.17.0.2:80", "web", "ok")
    assert matching(fw, "udp") == []


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
