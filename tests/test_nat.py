"""NAT interpretation and owner attribution on the reference listings (pure: no kernel).

The .rules files are the iptables-save listings of plumbing-reference.md; the .json files
were captured with `nft -j list ruleset` after loading the matching .nft file into a
throwaway namespace.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgescope.collector.firewall import assemble
from bridgescope.collector.firewall.nftjson import NftJsonError, parse_ruleset
from bridgescope.collector.firewall.proxy import from_argv
from bridgescope.collector.firewall.readers import NamespaceDump, SaveText
from bridgescope.collector.firewall.savefmt import ParseError
from bridgescope.collector.model import Interface
from bridgescope.collector.rules.model import parse_destination
from bridgescope.collector.rules.nat import interpret

DATA = Path(__file__).parent / "data" / "firewall"
HOST = "ns-1"


def container(bridge: str, gateway: str, address: str, ns: str, n: int) -> tuple[Interface, ...]:
    """A bridge in the host, a veth port on it, and its peer (with address) in namespace ns."""
    br, port, inside = f"{HOST}/if{10 + n}", f"{HOST}/if{20 + n}", f"{ns}/if2"
    return (Interface(id=br, netns=HOST, name=bridge, ifindex=10 + n, kind="bridge", state="up",
                      mtu=1500, mac=None, addresses=(gateway,)),
            Interface(id=port, netns=HOST, name=f"veth{n}", ifindex=20 + n, kind="veth",
                      state="up", mtu=1500, mac=None, master=br, peer=inside),
            Interface(id=inside, netns=ns, name="eth0", ifindex=2, kind="veth", state="up",
                      mtu=1500, mac=None, addresses=(address,), peer=port))


INTERFACES = (container("docker0", "172.17.0.1/16", "172.17.0.2/16", "ns-docker", 1)
              + container("bridge1", "192.0.2.1/24", "192.0.2.2/24", "ns-bridge1", 2)
              + container("podman0", "10.88.0.1/16", "10.88.0.14/16", "ns-podman", 3)
              + container("cni0", "10.22.0.1/16", "10.22.0.5/16", "ns-cni", 4)
              + container("docker0", "fd00:d0c::1/64", "fd00:d0c::2/64", "ns-docker6", 5))


def saves(name: str, backend: str = "nft", family: int = 4):
    return assemble([NamespaceDump(HOST, (SaveText(backend, family, (DATA / name).read_text()),))])


def nft(name: str, text: str | None = None):
    return assemble([NamespaceDump(HOST, (), (text or (DATA / name).read_text(),))])


def view(scan, interfaces=INTERFACES):
    return interpret(scan.rules, scan.chains, interfaces, ())


def only(items):
    assert len(items) == 1, items
    return items[0]


@pytest.mark.parametrize("name, to_ip, bridge, ns", [
    ("docker27.rules", "172.17.0.2", "docker0", "ns-docker"),
    ("docker28.rules", "172.17.0.2", "docker0", "ns-docker"),
    ("docker28.0.rules", "192.0.2.2", "bridge1", "ns-bridge1"),
    ("docker29.rules", "172.17.0.2", "docker0", "ns-docker"),
])
def test_docker_iptables_generations(name, to_ip, bridge, ns):
    scan = saves(name)
    nat = view(scan)
    forward = only(nat.port_forwards)
    assert (forward.proto, forward.host_ip, forward.host_port, forward.to_ip, forward.to_port) == (
        "tcp", None, 8080, to_ip, 80)
    assert (forward.owner, forward.backend, forward.chain) == ("docker", "nft", "DOCKER")
    assert forward.reachable and forward.forward_accept is True
    assert (forward.container, forward.to_interface) == (ns, f"{ns}/if2")
    masq = next(m for m in nat.masquerades if m.out_not == bridge)
    assert masq.source.endswith(("/16", "/24")) and masq.owner == "docker"
    # Docker writes no comments: every rule is still recognised as Docker's.
    assert {r.owner for r in scan.rules} == {"docker"}
    assert nat.warnings == () and scan.warnings == ()


def test_docker27_hairpin_masquerade_is_dockers():
    masq = [m for m in view(saves("docker27.rules")).masquerades if m.destination]
    assert [(m.source, m.destination, m.dest_not, m.owner) for m in masq] == [
        ("172.17.0.2/32", "172.17.0.2/32", False, "docker")]


def test_forward_policy_drop_without_accept_rule_blocks_the_forward():
    text = (DATA / "docker28.rules").read_text().replace(
        "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT\n", "")
    scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))])
    assert only(view(scan).port_forwards).forward_accept is False


@pytest.mark.parametrize("forward_rules, accepted", [
    (["-A FORWARD -o docker0 -j RETURN", "-A FORWARD -j ACCEPT"], False),  # RETURN: policy DROP
    (["-A FORWARD -g X", "-A FORWARD -j ACCEPT"], False),  # goto X falls off: policy
    (["-A FORWARD -j X", "-A FORWARD -j ACCEPT"], True),  # jump X falls off: next rule
    (["-A FORWARD -j X", "-A X -p tcp -j RETURN", "-A X -j DROP", "-A FORWARD -j ACCEPT"], True),
    (["-A FORWARD -p tcp -m tcp --dport 80 -j REJECT", "-A FORWARD -j ACCEPT"], False),
])
def test_forward_chain_flow_control(forward_rules, accepted):
    nat_rules = (DATA / "docker29.rules").read_text().split("*nat", 1)[1]
    text = "\n".join(["*filter", ":FORWARD DROP [0:0]", ":X - [0:0]", *forward_rules,
                      "-A X -p udp -j ACCEPT", "COMMIT", "*nat" + nat_rules])
    scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))])
    assert only(view(scan).port_forwards).forward_accept is accepted


def test_forward_verdict_unknown_when_it_depends_on_the_uplink():
    text = (DATA / "docker28.rules").read_text().replace(
        "-A FORWARD -j DOCKER-USER\n", "-A FORWARD -j DOCKER-USER\n-A FORWARD -i eth7 -j DROP\n")
    scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))])
    assert only(view(scan).port_forwards).forward_accept is None


def test_forward_verdict_unknown_without_interfaces():
    assert only(view(saves("docker29.rules"), ()).port_forwards).forward_accept is None


def test_docker29_nftables_backend():
    scan = nft("docker29-nftables.json")
    nat = view(scan)
    forward = only(nat.port_forwards)
    assert (forward.proto, forward.host_port, forward.to_ip, forward.to_port) == ("tcp", 8080, "172.17.0.2", 80)
    assert (forward.owner, forward.backend, forward.chain) == ("docker", "nftables", "nat-prerouting-and-output")
    assert forward.reachable and forward.container == "ns-docker"
    # Accepted in filter-forward-in__docker0, reached only through the verdict map.
    assert forward.forward_accept is True
    masq = only(nat.masquerades)
    assert (masq.source, masq.out_not, masq.owner, masq.backend) == (
        "172.17.0.0/16", "docker0", "docker", "nftables")
    assert {r.owner for r in scan.rules} == {"docker"}


def test_docker29_nftables_unpublished_port_is_dropped():
    data = json.loads((DATA / "docker29-nftables.json").read_text())
    for obj in data["nftables"]:  # take the per-port accept away
        rule = obj.get("rule")
        if rule and rule["chain"] == "filter-forward-in__docker0" and any(
                "match" in e and e["match"]["left"] == {"payload": {"protocol": "tcp", "field": "dport"}}
                for e in rule["expr"]):
            rule["expr"] = [{"continue": None}]
    assert only(view(nft("", json.dumps(data))).port_forwards).forward_accept is False


def test_netavark_iptables_single_port_and_range():
    nat = view(saves("netavark-iptables.rules"))
    got = sorted((f.host_port, f.host_port_end, f.to_port, f.to_port_end) for f in nat.port_forwards)
    assert got == [(8000, 8009, 80, 89), (8080, None, 80, None)]
    assert {(f.owner, f.container, f.forward_accept) for f in nat.port_forwards} == {
        ("podman", "ns-podman", True)}
    assert {(m.source, m.destination, m.dest_not, m.owner) for m in nat.masquerades} == {
        (None, None, False, "podman"), ("10.88.0.0/16", "224.0.0.0/4", True, "podman")}


def _netavark_with(forward_policy: str, ct_mark: bool) -> str:
    data = json.loads((DATA / "netavark-nftables.json").read_text())
    for obj in data["nftables"]:
        if "chain" in obj and obj["chain"]["name"] == "FORWARD":
            obj["chain"]["policy"] = forward_policy
        rule = obj.get("rule")
        if rule and not ct_mark:
            rule["expr"] = [e for e in rule["expr"] if "mangle" not in e or
                            e["mangle"]["key"] != {"ct": {"key": "mark"}}]
    return json.dumps(data)


@pytest.mark.parametrize("ct_mark, accepted", [(True, True), (False, False)])
def test_netavark_nftables_accepts_dnat_by_conntrack_mark(ct_mark, accepted):
    nat = view(nft("", _netavark_with("drop", ct_mark)))
    forward = only(nat.port_forwards)
    assert (forward.owner, forward.backend, forward.to_ip, forward.host_port) == (
        "podman", "nftables", "10.88.0.14", 8080)
    assert forward.forward_accept is accepted


def test_cni_portmap_iptables():
    scan = saves("cni-portmap.rules")
    nat = view(scan)
    forward = only(nat.port_forwards)
    assert (forward.host_port, forward.to_ip, forward.to_port, forward.chain) == (
        8080, "10.22.0.5", 80, "CNI-DN-15815ef49e0fdf04a7469")
    assert (forward.owner, forward.container, forward.reachable) == ("cni", "ns-cni", True)
    # The per-container chain's MASQUERADE inherits `-s 10.22.0.5/32` from the jump to it.
    assert {(m.source, m.destination, m.dest_not) for m in nat.masquerades} == {
        (None, None, False), ("10.22.0.5/32", "224.0.0.0/4", True)}
    assert {r.owner for r in scan.rules} == {"cni"}


def test_cni_portmap_nftables():
    nat = view(nft("cni-portmap-nftables.json"))
    got = {(f.proto, f.host_ip, f.host_port, f.to_port, f.reachable) for f in nat.port_forwards}
    assert got == {("tcp", None, 8080, 80, True), ("udp", None, 5353, 53, True),
                   ("tcp", "127.0.0.1", 8443, 443, True)}
    assert {f.owner for f in nat.port_forwards} == {"cni"}
    assert {(m.source, m.destination) for m in nat.masquerades} == {
        ("10.22.0.5", "10.22.0.5"), ("127.0.0.1", "10.22.0.5")}


def test_variants_udp_host_ip_loopback_range_and_orphan():
    scan = saves("variants.rules")
    forwards = {(f.proto, f.host_ip, f.host_port): f for f in view(scan).port_forwards}
    udp = forwards[("udp", None, 5353)]
    assert (udp.to_ip, udp.to_port, udp.owner, udp.forward_accept) == ("172.17.0.3", 53, "docker", True)
    bound = forwards[("tcp", "192.0.2.10", 8443)]
    assert bound.reachable and bound.forward_accept is True
    # (the host's own 127.0.0.1:8443 never meets the DNAT: a verdict, test_reach)
    loopback = forwards[("tcp", "127.0.0.1", 8443)]
    assert loopback.reachable
    ranged = forwards[("tcp", None, 8000)]
    assert (ranged.host_port_end, ranged.to_port, ranged.to_port_end) == (8009, 80, 89)
    assert ranged.forward_accept is False  # FORWARD policy DROP, no accept for 172.17.0.6
    orphan = forwards[("tcp", None, 9090)]
    assert not orphan.reachable and orphan.chain == "ORPHAN"
    raw_drop = next(r for r in scan.rules if r.table == "raw")
    assert raw_drop.owner == "docker"  # guards Docker's port 8443 on 127.0.0.1
    snat = next(m for m in view(scan).masquerades if m.to_source)
    assert (snat.source, snat.out, snat.to_source, snat.owner) == (
        "172.17.0.0/16", "uplink0", "192.0.2.10", "unknown")


def test_ipv6_forward():
    forward = only(view(saves("docker29-ipv6.rules", family=6)).port_forwards)
    assert (forward.to_ip, forward.to_port, forward.host_port, forward.container) == (
        "fd00:d0c::2", 80, 8080, "ns-docker6")
    assert forward.forward_accept is True


def test_docker_dns_rules_inside_a_container():
    """Docker's embedded DNS: nat rules in the container's own namespace, OUTPUT only."""
    text = "\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", ":DOCKER_OUTPUT - [0:0]", ":DOCKER_POSTROUTING - [0:0]",
        "-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT",
        "-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING",
        "-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:41234",
        "-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 41234 -j SNAT --to-source :53",
        "COMMIT", ""])
    scan = assemble([NamespaceDump("ns-docker", (SaveText("nft", 4, text),))])
    assert {r.owner for r in scan.rules} == {"docker"}
    nat = view(scan)
    dns = only(nat.port_forwards)
    assert (dns.host_ip, dns.host_port, dns.to_ip, dns.to_port, dns.proto) == (
        "127.0.0.11", 53, "127.0.0.11", 41234, "udp")
    assert not dns.reachable  # the container's own resolver, not published
    snat = only(nat.masquerades)
    assert (snat.source, snat.to_source, snat.destination) == ("127.0.0.11/32", ":53", "127.0.0.11/32")


def test_unchanged_dump_is_not_parsed_again():
    dump = NamespaceDump(HOST, (SaveText("nft", 4, (DATA / "docker29.rules").read_text()),))
    first = assemble([dump])
    again = assemble([NamespaceDump(HOST, (SaveText("nft", 4, (DATA / "docker29.rules").read_text()),))])
    assert again == first and again.rules[0] is first.rules[0]
    changed = (DATA / "docker29.rules").read_text().replace("8080", "8081")
    other = assemble([NamespaceDump(HOST, (SaveText("nft", 4, changed),))])
    assert only(view(other).port_forwards).host_port == 8081


def test_compat_tables_skipped_and_xt_expressions_opaque():
    """iptables-nft's own tables are read by iptables-nft-save; xt elsewhere stays opaque."""
    ruleset = {"nftables": [
        {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "type": "nat",
                   "hook": "prerouting", "policy": "accept"}},
        {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING",
                  "expr": [{"xt": {"type": "target", "name": "DNAT"}}]}},
        {"chain": {"family": "ip", "table": "firewalld", "name": "pre"}},
        {"rule": {"family": "ip", "table": "firewalld", "chain": "pre", "handle": 7,
                  "expr": [{"xt": {"type": "match", "name": "comment"}}, {"accept": None}]}}]}
    scan = nft("", json.dumps(ruleset))
    rule = only(scan.rules)
    assert (rule.table, rule.backend, rule.target, rule.handle) == ("firewalld", "nftables", "ACCEPT", 7)
    assert rule.matches == (("xt", ("xt match comment",), False),)
    assert "iptables-nft compat" in rule.text and rule.owner == "unknown"


def test_split_brain_names_both_backends():
    dumps = [NamespaceDump(HOST, (SaveText("nft", 4, (DATA / "docker29.rules").read_text()),
                                  SaveText("legacy", 4, (DATA / "cni-portmap.rules").read_text())))]
    warning = only(assemble(dumps).warnings)
    assert HOST in warning and "iptables-legacy" in warning and "iptables-nft" in warning


def test_no_split_brain_for_one_backend():
    assert saves("docker29.rules", backend="legacy").warnings == ()


def test_owner_tags_bridgescope_kube_proxy():
    text = "\n".join(["*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
                      ":BRIDGESCOPE-PRE - [0:0]", ":KUBE-SERVICES - [0:0]",
                      "-A PREROUTING -j BRIDGESCOPE-PRE", "-A PREROUTING -j KUBE-SERVICES",
                      '-A POSTROUTING -s 10.5.0.0/24 -m comment --comment "bridgescope:net-a" -j MASQUERADE',
                      "-A BRIDGESCOPE-PRE -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.5.0.2:80",
                      "-A POSTROUTING -s 10.6.0.0/24 -j MASQUERADE", "COMMIT", ""])
    scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))])
    assert [r.owner for r in scan.rules] == ["bridgescope", "kube-proxy", "bridgescope",
                                             "bridgescope", "unknown"]
    assert only(view(scan).port_forwards).owner == "bridgescope"


def test_bad_destination_and_unreached_masquerade_are_warnings():
    text = "\n".join(["*nat", ":PREROUTING ACCEPT [0:0]", ":LOST - [0:0]",
                      "-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination nonsense:80",
                      "-A LOST -j MASQUERADE", "COMMIT", ""])
    nat = view(assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))]))
    assert nat.port_forwards == () and nat.masquerades == ()
    assert len(nat.warnings) == 2
    assert "nonsense:80" in nat.warnings[0] and "never reached" in nat.warnings[1]


def test_unreadable_port_is_a_warning():
    text = "\n".join(["*nat", ":PREROUTING ACCEPT [0:0]",
                      "-A PREROUTING -p tcp -m tcp --dport http -j DNAT --to-destination 10.0.0.1:80",
                      "COMMIT", ""])
    nat = view(assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))]))
    assert nat.port_forwards == () and "--dport http" in only(nat.warnings)


def test_broken_save_output_becomes_a_warning_not_a_crash():
    scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, "*nat\n-A X -j Y\n"),), ("{not json",))])
    assert scan.rules == () and len(scan.warnings) == 2


def test_docker_proxy_listener_is_a_forward_to_the_container():
    argv = ["/usr/bin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", "8080",
            "-container-ip", "172.17.0.2", "-container-port", "80", "-use-listen-fd"]
    proxy = from_argv(argv, HOST)
    forward = only(interpret((), (), INTERFACES, (), proxies=(proxy,)).port_forwards)
    assert (forward.via, forward.host_ip, forward.host_port, forward.owner, forward.container) == (
        "proxy", None, 8080, "docker", "ns-docker")
    assert from_argv(["docker-proxy", "-proto", "tcp", "-host-port", "x"], HOST) is None


@pytest.mark.parametrize("text, expected", [
    ("172.17.0.2:80", ("172.17.0.2", 80, None)),
    ("10.88.0.14:80-89/8000", ("10.88.0.14", 80, 89)),
    ("10.0.0.1", ("10.0.0.1", None, None)),
    ("10.0.0.1-10.0.0.9:443", ("10.0.0.1", 443, None)),
    ("[fd00::2]:80", ("fd00::2", 80, None)),
    ("fd00::2", ("fd00::2", None, None)),
    ("", None), ("host:80", None), ("10.0.0.1:http", None), ("010.0.0.1:80", None),
    ("10.0.0.256:80", None), ("10.0.0.1:80-x", None), ("1.2.3:80", None),
])
def test_parse_destination(text, expected):
    assert parse_destination(text) == expected


# Dotted quads as iptables prints them, and near misses: octets past 255 or with a leading
# zero, ports and prefix lengths of any digits, stray separators
_octet = st.one_of(st.integers(0, 255).map(str),
                   st.sampled_from(["256", "300", "01", "099", "", "x", " 1"]))
_quads = st.one_of(st.lists(_octet, min_size=4, max_size=4),
                   st.lists(_octet, min_size=3, max_size=5)).map(".".join)
_tails = st.one_of(st.sampled_from(["", ":", ":080", ":80-89", ":80-", ":8a", "/", "/07", "/128",
                                    "/32:80", "-1.2.3.4:80", ":80/8000", "/24/"]),
                   st.integers(0, 70000).map(lambda n: f":{n}"), st.integers(0, 40).map(lambda n: f"/{n}"))


@settings(max_examples=1000, deadline=None)
@given(_quads, _tails)
def test_the_dotted_quad_short_cuts_read_as_the_general_parsers(quad, tail):
    """parse_destination, span, address_number and host_text take a regex short cut for one
    IPv4 address (5,000 published ports mean 10,000 of them); each answers as the general path
    (ipaddress) does, for every near miss too."""
    import ipaddress

    from bridgescope.collector.rules import model
    text = quad + tail
    assert parse_destination(text) == model._any_destination(text)
    net = model.network(text)
    assert model.span(text) == (None if net is None else (
        net.version, int(net.network_address), int(net.broadcast_address)))
    try:
        number = ipaddress.ip_address(text)
    except ValueError:
        assert model.address_number(text) is None
    else:
        assert model.address_number(text) == (number.version, int(number))
    assert model.host_text(text) == model._host_network(text)
    assert model.port_spans(tail[1:]) == model._port_list(tail[1:])


def test_empty_input():
    assert interpret((), (), (), ()) == type(interpret((), (), (), ()))()


# -- property tests: no input makes the decoders or the interpreter raise ----------------------


OPTIONS = st.sampled_from([
    "-p tcp", "-p udp", "-p all", "-m tcp --dport 80", "--dport 8000:8009", "--dport x",
    "-m multiport --dports 80,443", "--dports 1,,2", "-d 10.0.0.1/32", "-d nonsense", "! -d 127.0.0.0/8",
    "-s 0.0.0.0/0", "-s fe80::/10", "-i docker0", "! -i docker0", "-o br+", "-m addrtype --dst-type LOCAL",
    "-m conntrack --ctstate NEW", "-m mark --mark 0x2000/0x2000", "-m connmark --ctmark zz",
    "-m set --match-set docker-ext-bridges-v4 dst"])
TARGETS = st.sampled_from([
    "-j DNAT --to-destination 10.0.0.2:80", "-j DNAT --to-destination [fd00::2]:80",
    "-j DNAT --to-destination bad", "-j DNAT", "-j MASQUERADE", "-j SNAT --to-source 1.2.3.4",
    "-j ACCEPT", "-j DROP", "-j RETURN", "-j A", "-j B", "-g A", "-j VMAP", ""])
CHAINS = st.sampled_from(["PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD", "A", "B"])
RULES = st.lists(st.tuples(CHAINS, st.lists(OPTIONS, max_size=4), TARGETS), max_size=12)


@settings(max_examples=300, deadline=None)
@given(RULES, st.sampled_from(["nat", "filter"]), st.booleans())
def test_interpret_never_raises_on_odd_rule_sets(rules, table, loops):
    lines = ["*" + table] + [f":{c} {'ACCEPT' if c.isupper() and len(c) > 1 else '-'} [0:0]"
                             for c in ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD", "A", "B")]
    lines += [f"-A {chain} {' '.join(opts)} {target}".rstrip() for chain, opts, target in rules]
    if loops:
        lines += ["-A A -j B", "-A B -j A"]
    try:
        scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, "\n".join(lines + ["COMMIT", ""])),))])
    except ParseError:
        return
    nat = interpret(scan.rules, scan.chains, INTERFACES, ())
    assert all(isinstance(w, str) and "\n" not in w for w in nat.warnings)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["family", "table", "name", "chain", "expr", "match", "left", "right", "op",
                         "payload", "protocol", "field", "meta", "key", "dnat", "addr", "port",
                         "jump", "target", "vmap", "data", "map", "elem", "rule", "hook", "type",
                         "set", "prefix", "len", "range", "&", "counter", "policy"]),
        inner, max_size=4),
    max_leaves=30)


well_formed_rules = st.builds(
    lambda chain, expr: {"rule": {"family": "ip", "table": "t", "chain": chain, "expr": expr}},
    st.sampled_from(["pre", "fwd", "x"]),
    st.lists(json_values | st.sampled_from([
        {"jump": {"target": "x"}}, {"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@m"}},
        {"dnat": {"addr": "10.0.0.2", "port": {"range": [80, 89]}}}, {"masquerade": None},
        {"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [80, {"range": [1, 2]}]}}}]), max_size=5))
base_chains = st.just([{"chain": {"family": "ip", "table": "t", "name": "pre", "type": "nat",
                                  "hook": "prerouting", "policy": "accept"}},
                       {"chain": {"family": "ip", "table": "t", "name": "fwd", "type": "filter",
                                  "hook": "forward", "policy": "drop"}},
                       {"chain": {"family": "ip", "table": "t", "name": "x"}},
                       {"map": {"family": "ip", "table": "t", "name": "m",
                                "elem": [["docker0", {"jump": {"target": "x"}}]]}}])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["rule", "chain", "map", "table"]), json_values,
                                min_size=1, max_size=1) | well_formed_rules, max_size=5),
       base_chains)
def test_nft_json_decoder_gives_rules_or_one_clear_error(objects, chains):
    objects = chains + objects
    try:
        rules, chains = parse_ruleset(json.dumps({"nftables": objects}), netns=HOST)
    except NftJsonError as err:
        assert "\n" not in str(err)
        return
    interpret(rules, chains, INTERFACES, ())


def test_forward_verdicts_of_many_published_ports_grow_with_the_ports_not_their_square(monkeypatch):
    """Docker's filter DOCKER chain holds one ACCEPT per published port (`-d C/32 ... --dport
    P`); each forward's packet is shown the rules that name its container, not all of them."""
    from bridgescope.collector.rules import evaluator
    count = 300
    ips = [f"172.17.{1 + i // 250}.{i % 250 + 2}" for i in range(count)]
    text = "\n".join(
        ["*filter", ":FORWARD DROP [0:0]", ":DOCKER - [0:0]", "-A FORWARD -o docker0 -j DOCKER",
         *[f"-A DOCKER -d {ip}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT" for ip in ips],
         "COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]", ":DOCKER - [0:0]",
         "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
         *[f"-A DOCKER ! -i docker0 -p tcp -m tcp --dport {10000 + i} -j DNAT --to-destination {ip}:80"
           for i, ip in enumerate(ips)],
         "COMMIT", ""])
    scan = assemble([NamespaceDump(HOST, (SaveText("nft", 4, text),))])
    calls = []
    real = evaluator.matches
    monkeypatch.setattr(evaluator, "matches", lambda rule, packet: calls.append(rule) or real(rule, packet))
    forwards = view(scan).port_forwards
    assert len(forwards) == count and {f.forward_accept for f in forwards} == {True}
    assert len(calls) < 5 * count, f"{len(calls)} rules tried for {count} forwards"


def test_the_walk_hands_a_chains_rules_one_path_and_only_the_targets_asked_for():
    """What the NAT interpretation builds on: a DNAT's path conditions are read once per
    chain, since every rule of the chain comes with the same path (its own matches apart)."""
    from bridgescope.collector.firewall.savefmt import parse_save
    from bridgescope.collector.rules.model import RuleSet
    rules, chains = parse_save("\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A DOCKER -i docker0 -j RETURN",
        "-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
        "-A DOCKER -j MASQUERADE",
        "-A DOCKER -p udp -m udp --dport 53 -j DNAT --to-destination 172.17.0.3:53",
        "COMMIT", ""]), netns=HOST, backend="nft", family=4)
    found = RuleSet(rules, chains).walk((HOST, "nft", 4, "nat"), "PREROUTING", frozenset({"DNAT"}))
    assert [rule.position for rule, _ in found] == [2, 4]
    (_, first), (_, second) = found
    assert first is second == (("-m", ("addrtype",), False), ("--dst-type", ("LOCAL",), False))
