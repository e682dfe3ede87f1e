"""The doctor as a pure function: hand-built snapshots of a Docker-style host, each broken in
exactly one way, must yield exactly that finding; the healthy one yields none."""
from __future__ import annotations

from dataclasses import replace

import pytest

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

HOST, CTR, OTHER = "ns-1", "ns-2", "ns-3"


def rule(chain: str, text: str, *, table: str = "nat", target: str | None = None,
         backend: str = "nft", netns: str = HOST, **opts) -> Rule:
    """A parsed iptables rule; opts like s="172.17.0.0/16", not_o="docker0"."""
    matches = []
    for key, value in opts.items():
        neg = key.startswith("not_")
        name = key[4:] if neg else key
        flag = f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}"
        matches.append((flag, (value,), neg))
    return Rule(netns=netns, backend=backend, family=4, table=table, chain=chain,
                text=f"-A {chain} {text}", matches=tuple(matches), target=target)


def dnat_rule(**extra) -> Rule:
    return replace(rule("DOCKER", "! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT "
                        "--to-destination 172.17.0.2:80", target="DNAT", not_i="docker0",
                        p="tcp", dport="8080"),
                   target_args=(("--to-destination", "172.17.0.2:80"),), **extra)


MASQ = rule("POSTROUTING", "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", target="MASQUERADE",
            s="172.17.0.0/16", not_o="docker0")


# the host's own connections to its published ports (Docker skips 127.0.0.0/8: docker-proxy's)
OUTPUT_JUMP = rule("OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER", target="DOCKER",
                   not_d="127.0.0.0/8", dst_type="LOCAL")


def healthy() -> Snapshot:
    """Docker 29 after `docker run -p 8080:80` with one container (reference 1.2)."""
    host = Namespace(HOST, "bstX-host", 1, paths=("/run/netns/bstX-host",), is_host=True,
                     sysctls=(("net.ipv4.ip_forward", "1"),
                              ("net.bridge.bridge-nf-call-iptables", "1")))
    ctr = Namespace(CTR, "bstX-c1", 2, paths=("/run/netns/bstX-c1",))
    ifaces = (
        Interface(f"{HOST}/if2", HOST, "eth0", 2, "veth", "up", 1500, None, ("192.0.2.10/24",)),
        Interface(f"{HOST}/if3", HOST, "docker0", 3, "bridge", "up", 1500, None, ("172.17.0.1/16",)),
        Interface(f"{HOST}/if4", HOST, "veth1a2b3c4", 4, "veth", "up", 1500, None,
                  master=f"{HOST}/if3", peer=f"{CTR}/if2", hairpin=False),
        Interface(f"{CTR}/if1", CTR, "lo", 1, "loopback", "up", 65536, None, ("127.0.0.1/8",)),
        Interface(f"{CTR}/if2", CTR, "eth0", 2, "veth", "up", 1500, None, ("172.17.0.2/16",),
                  peer=f"{HOST}/if4"),
    )
    routes = (
        Route(HOST, "default", "192.0.2.1", "eth0"),
        Route(HOST, "172.17.0.0/16", None, "docker0"),
        Route(CTR, "default", "172.17.0.1", "eth0"),
        Route(CTR, "172.17.0.0/16", None, "eth0"),
    )
    dnat = dnat_rule()
    rules = (
        rule("PREROUTING", "-m addrtype --dst-type LOCAL -j DOCKER", target="DOCKER", dst_type="LOCAL"),
        OUTPUT_JUMP, MASQ, dnat,
        rule("FORWARD", "-j DOCKER-FORWARD", table="filter", target="DOCKER-FORWARD"),
        rule("DOCKER-FORWARD", "-i docker0 -j ACCEPT", table="filter", target="ACCEPT", i="docker0"),
        rule("DOCKER-FORWARD", "-o docker0 -j DOCKER", table="filter", target="DOCKER", o="docker0"),
        rule("DOCKER", "-d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
             table="filter", target="ACCEPT", d="172.17.0.2/32", not_i="docker0", o="docker0"),
    )
    chains = (Chain(HOST, "nft", 4, "filter", "FORWARD", policy="DROP", hook="forward"),) + tuple(
        Chain(HOST, "nft", 4, "nat", name.upper(), policy="ACCEPT", hook=name, hook_type="nat")
        for name in ("prerouting", "output", "postrouting"))
    pf = PortForward(HOST, "tcp", None, 8080, "172.17.0.2", 80, "docker", "nft", container=CTR,
                     to_interface=f"{CTR}/if2", chain="DOCKER", rule_text=dnat.text,
                     forward_accept=True)
    masq = Masquerade(HOST, "172.17.0.0/16", "docker0", "docker", "nft", chain="POSTROUTING",
                      rule_text=MASQ.text)
    return Snapshot((host, ctr), ifaces, routes, rules, chains, (pf,), (masq,), host=HOST)


def with_iface(snap: Snapshot, if_id: str, **changes) -> Snapshot:
    return replace(snap, interfaces=tuple(replace(i, **changes) if i.id == if_id else i
                                          for i in snap.interfaces))


def ids(snap: Snapshot) -> list[str]:
    return [f.id for f in diagnose(snap)]


def test_healthy_docker_host_has_no_finding():
    assert diagnose(healthy()) == ()


def test_ip_forward_off():
    snap = healthy()
    host = replace(snap.namespaces[0], sysctls=(("net.ipv4.ip_forward", "0"),))
    found = diagnose(replace(snap, namespaces=(host, snap.namespaces[1])))
    assert [f.id for f in found] == ["ip-forward-off"]
    assert found[0].objects == (HOST,)
    assert found[0].fix == ("ip netns exec bstX-host sysctl -w net.ipv4.ip_forward=1",)


def test_ip_forward_off_without_containers_is_not_a_problem():
    snap = healthy()
    host = replace(snap.namespaces[0], sysctls=(("net.ipv4.ip_forward", "0"),))
    bare = replace(snap, namespaces=(host,), interfaces=snap.interfaces[:2], port_forwards=())
    assert "ip-forward-off" not in ids(bare)


def test_container_eth0_down_is_one_link_down_not_also_a_missing_route():
    snap = with_iface(healthy(), f"{CTR}/if2", state="down")
    snap = replace(snap, routes=tuple(r for r in snap.routes if r.netns != CTR))  # kernel drops them
    found = diagnose(snap)
    assert [f.id for f in found] == ["link-down"]
    assert found[0].objects == (f"{CTR}/if2", CTR)
    assert found[0].fix == ("ip -n bstX-c1 link set eth0 up",)


@pytest.mark.parametrize("if_id,severity", [(f"{HOST}/if3", "error"), (f"{HOST}/if4", "error"),
                                            (f"{CTR}/if1", "warning")])
def test_bridge_port_and_lo_down(if_id, severity):
    found = diagnose(with_iface(healthy(), if_id, state="down"))
    assert [(f.id, f.severity, f.objects[0]) for f in found] == [("link-down", severity, if_id)]


def test_address_without_prefix():
    snap = with_iface(healthy(), f"{CTR}/if2", addresses=("172.17.0.2/32",))
    snap = replace(snap, routes=tuple(r for r in snap.routes if r.netns != CTR))
    found = diagnose(snap)
    assert [f.id for f in found] == ["addr-no-prefix"]
    assert found[0].fix == ("ip -n bstX-c1 addr del 172.17.0.2/32 dev eth0",
                            "ip -n bstX-c1 addr add 172.17.0.2/16 dev eth0",
                            "ip -n bstX-c1 route replace default via 172.17.0.1")


def test_slash32_with_onlink_route_to_the_gateway_is_fine():
    snap = with_iface(healthy(), f"{CTR}/if2", addresses=("172.17.0.2/32",))
    snap = replace(snap, routes=snap.routes[:3] + (Route(CTR, "172.17.0.1/32", None, "eth0"),))
    assert diagnose(snap) == ()


def test_no_default_route():
    snap = healthy()
    snap = replace(snap, routes=tuple(r for r in snap.routes if not (r.netns == CTR and r.dst == "default")))
    found = diagnose(snap)
    assert [f.id for f in found] == ["no-default-route"]
    assert found[0].fix == ("ip -n bstX-c1 route add default via 172.17.0.1",)


def test_masquerade_missing():
    snap = replace(healthy(), masquerades=(), rules=tuple(r for r in healthy().rules if r is not MASQ))
    found = diagnose(snap)
    assert [f.id for f in found] == ["masquerade-missing"]
    assert found[0].objects == (f"{HOST}/if3",)
    assert found[0].fix == ("ip netns exec bstX-host iptables -t nat -A POSTROUTING -s 172.17.0.0/16 "
                            "'!' -o docker0 -j MASQUERADE",)


def test_masquerade_for_the_bridge_itself_or_by_mark_does_not_count():
    """-o docker0 --src-type LOCAL (hairpin helper) and mark-based masquerades are not outbound."""
    local = rule("POSTROUTING", "-o docker0 -m addrtype --src-type LOCAL -j MASQUERADE",
                 target="MASQUERADE", o="docker0", src_type="LOCAL")
    mark = rule("CNI-HOSTPORT-MASQ", "-m mark --mark 0x2000/0x2000 -j MASQUERADE",
                target="MASQUERADE", mark="0x2000/0x2000")
    masqs = (Masquerade(HOST, None, None, "docker", "nft", out="docker0", chain="POSTROUTING",
                        rule_text=local.text),
             Masquerade(HOST, None, None, "cni", "nft", chain="CNI-HOSTPORT-MASQ", rule_text=mark.text))
    snap = replace(healthy(), masquerades=masqs, rules=(local, mark) + tuple(r for r in healthy().rules if r is not MASQ))
    assert ids(snap) == ["masquerade-missing"]


def blog_masquerade(snap: Snapshot) -> Snapshot:
    bad = rule("POSTROUTING", "-s 172.17.0.0/24 -j MASQUERADE", target="MASQUERADE", s="172.17.0.0/24")
    masq = Masquerade(HOST, "172.17.0.0/24", None, "unknown", "nft", chain="POSTROUTING", rule_text=bad.text)
    return replace(snap, masquerades=(masq,), rules=(bad,) + tuple(r for r in snap.rules if r is not MASQ))


def test_masquerade_mask_mismatch_is_a_warning_while_all_containers_fit():
    found = diagnose(blog_masquerade(healthy()))
    assert [(f.id, f.severity) for f in found] == [("masquerade-mask-mismatch", "warning")]
    assert found[0].fix[0] == ("ip netns exec bstX-host iptables -t nat -D POSTROUTING "
                               "-s 172.17.0.0/24 -j MASQUERADE")


def test_masquerade_mask_mismatch_is_an_error_when_a_container_falls_outside():
    snap = with_iface(healthy(), f"{CTR}/if2", addresses=("172.17.1.2/16",))
    snap = replace(snap, port_forwards=(), rules=tuple(r for r in snap.rules if "172.17.0.2" not in r.text))
    found = diagnose(blog_masquerade(snap))
    assert [(f.id, f.severity) for f in found] == [("masquerade-mask-mismatch", "error")]


def test_per_container_masquerade_like_cni_covers_the_subnet():
    masq = Masquerade(HOST, "172.17.0.2/32", None, "cni", "nft", chain="POSTROUTING")
    assert diagnose(replace(healthy(), masquerades=(masq,))) == ()


def without_jumps(snap: Snapshot, *chains: str) -> Snapshot:
    return replace(snap, rules=tuple(r for r in snap.rules if not (r.table == "nat" and r.chain in chains)))


def test_dnat_unreachable():
    found = diagnose(without_jumps(healthy(), "PREROUTING", "OUTPUT"))
    assert [f.id for f in found] == ["dnat-unreachable"]
    assert found[0].objects == (f"pf:{HOST}:tcp:*:8080", f"{CTR}/if2")
    assert any("PREROUTING -m addrtype --dst-type LOCAL -j DOCKER" in c for c in found[0].fix)
    assert "nothing jumps from PREROUTING to chain DOCKER" in found[0].explanation


def test_dnat_not_from_host():
    found = diagnose(without_jumps(healthy(), "OUTPUT"))
    assert [f.id for f in found] == ["dnat-not-from-host"]
    assert "nothing jumps from OUTPUT to chain DOCKER" in found[0].explanation


def test_dnat_findings_are_the_verdicts_of_the_panel():
    """The doctor and the forward's panel read one verdict: a jump that exists but lets no
    packet to the port through (here: only for another interface) is the same finding as no
    jump at all, and a program on the host answering the port (a proxy) is no finding."""
    from bridgescope.collector.kernel.listeners import Listener, ListenerRead
    from bridgescope.collector.rules import reach

    snap = without_jumps(healthy(), "PREROUTING")
    narrow = rule("PREROUTING", "-i eth9 -j DOCKER", target="DOCKER", i="eth9")
    snap = replace(snap, rules=snap.rules + (narrow,))
    (fr,) = reach.reach(snap)
    assert fr.verdict("outside").cause == "nat-unreached"
    assert ids(snap) == ["dnat-unreachable"]
    proxy = ListenerRead({HOST: frozenset({Listener("tcp", "0.0.0.0", 8080)}),
                          CTR: frozenset({Listener("tcp", "0.0.0.0", 80)})}, 1.0)
    assert reach.reach(snap, proxy)[0].verdict("outside").ok
    assert [f.id for f in diagnose(snap, listeners=proxy)] == []


def test_forward_blocked_for_a_port_and_for_outbound():
    snap = healthy()
    snap = replace(snap, port_forwards=(replace(snap.port_forwards[0], forward_accept=False),))
    assert ids(snap) == ["forward-blocked"]
    snap = replace(snap, rules=tuple(r for r in snap.rules if r.chain != "DOCKER-FORWARD"))
    found = diagnose(snap)
    assert [f.objects[0] for f in found] == [f"pf:{HOST}:tcp:*:8080", f"{HOST}/if3"]


def test_outbound_accept_by_source_subnet_like_podman_counts():
    podman = rule("NETAVARK_FORWARD", "-s 172.17.0.0/16 -j ACCEPT", table="filter", target="ACCEPT",
                  s="172.17.0.0/16")
    jump = rule("FORWARD", "-j NETAVARK_FORWARD", table="filter", target="NETAVARK_FORWARD")
    snap = healthy()
    snap = replace(snap, rules=tuple(r for r in snap.rules if r.chain != "DOCKER-FORWARD") + (jump, podman))
    assert diagnose(snap) == ()
    # an accept in a chain nothing jumps to accepts nothing
    assert ids(replace(snap, rules=tuple(r for r in snap.rules if r is not jump))) == ["forward-blocked"]


DECLARED = (Chain(HOST, "nft", 4, "nat", "PREROUTING", "ACCEPT", hook="prerouting", hook_type="nat"),
            Chain(HOST, "nft", 4, "nat", "DOCKER"), Chain(HOST, "nft", 4, "filter", "DOCKER"),
            Chain(HOST, "nft", 4, "filter", "DOCKER-FORWARD"))


FILTER_JUMP = rule("FORWARD", "-o docker0 -j DOCKER", table="filter", target="DOCKER", o="docker0")


def interpreted(snap: Snapshot) -> Snapshot:
    """The port forwards as nat.interpret reads them from the snapshot's rules and chains
    (with the chains declared and the filter jump to DOCKER that leads to the per-port accept)."""
    from bridgescope.collector.rules.nat import interpret
    chains, rules = snap.chains + DECLARED, snap.rules + (FILTER_JUMP,)
    nat = interpret(rules, chains, snap.interfaces, snap.namespaces)
    return replace(snap, chains=chains, rules=rules, port_forwards=nat.port_forwards)


def test_legacy_forward_policy_drop_decides_although_iptables_nft_accepts():
    """A Docker 20.10 host: Docker's accepts in iptables-nft, an iptables-legacy filter table
    left with FORWARD policy DROP. Real traffic is dropped (test_firewall_kernel checks it);
    the cause and the fix are the legacy table's policy, not a missing ACCEPT."""
    assert interpreted(healthy()).port_forwards[0].forward_accept is True
    legacy = Chain(HOST, "legacy", 4, "filter", "FORWARD", policy="DROP", hook="forward", hook_type="filter")
    snap = interpreted(replace(healthy(), chains=healthy().chains + (legacy,)))
    assert snap.port_forwards[0].forward_accept is False
    # one cause, one finding for the port and the outbound traffic
    found = [f for f in diagnose(snap) if f.id == "forward-blocked"]
    assert len(found) == 1
    assert found[0].objects == (f"pf:{HOST}:tcp:*:8080", f"{CTR}/if2", f"{HOST}/if3")
    assert "the iptables-legacy filter table's FORWARD chain has policy DROP" in found[0].title
    assert "iptables-nft filter table's FORWARD chain accepts them" in found[0].explanation
    assert found[0].fix == ("ip netns exec bstX-host iptables-legacy -P FORWARD ACCEPT",)


def test_forward_blocked_names_the_table_whose_rule_drops():
    drop = replace(rule("DOCKER-USER", "-d 172.17.0.2/32 -j DROP", table="filter", target="DROP",
                        d="172.17.0.2/32"), backend="legacy")
    jump = replace(rule("FORWARD", "-j DOCKER-USER", table="filter", target="DOCKER-USER"), backend="legacy")
    legacy = Chain(HOST, "legacy", 4, "filter", "FORWARD", policy="ACCEPT", hook="forward", hook_type="filter")
    snap = interpreted(replace(healthy(), chains=healthy().chains + (legacy,),
                               rules=healthy().rules + (jump, drop)))
    found = [f for f in diagnose(snap) if f.id == "forward-blocked"]
    assert len(found) == 1 and "iptables-legacy filter table's FORWARD chain" in found[0].explanation
    assert "-A DOCKER-USER -d 172.17.0.2/32 -j DROP" in found[0].explanation
    assert found[0].fix[0].startswith("ip netns exec bstX-host iptables-legacy -I FORWARD -d 172.17.0.2/32")


def test_forward_blocked_by_an_nftables_rule_is_fixed_in_that_chain():
    """Native nftables (Docker 29's nftables backend, firewalld) drops: the fix inserts an
    accept before the drop in the same nft chain, not an `iptables` rule in another table."""
    base = Chain(HOST, "nftables", 0, "fw", "fwd", policy="ACCEPT", hook="forward", hook_type="filter",
                 priority=0)
    drop = Rule(netns=HOST, backend="nftables", family=0, table="fw", chain="fwd",
                text='oifname "docker0" drop', matches=(("-o", ("docker0",), False),), target="DROP", handle=4)
    snap = interpreted(replace(healthy(), chains=healthy().chains + (base,), rules=healthy().rules + (drop,)))
    found = [f for f in diagnose(snap) if f.id == "forward-blocked"]
    assert len(found) == 1 and "nftables table inet fw's fwd chain" in found[0].explanation
    assert found[0].fix == ("ip netns exec bstX-host nft insert rule inet fw fwd ip daddr 172.17.0.2 "
                            "oifname '\"docker0\"' tcp dport 80 accept",)


def test_outbound_blocked_by_a_drop_rule_gets_accepts_inserted_before_it():
    """An appended ACCEPT comes after the DROP that decides, so it would never match."""
    drop = rule("DOCKER-USER", "-i docker0 -j DROP", table="filter", target="DROP", i="docker0")
    jump = rule("FORWARD", "-j DOCKER-USER", table="filter", target="DOCKER-USER")
    snap = interpreted(replace(healthy(), rules=(jump, drop) + healthy().rules))
    outbound = [f for f in diagnose(snap) if f.id == "forward-blocked" and f.objects == (f"{HOST}/if3",)]
    assert len(outbound) == 1
    assert outbound[0].fix == (
        "ip netns exec bstX-host iptables -I FORWARD -i docker0 '!' -o docker0 -j ACCEPT",
        "ip netns exec bstX-host iptables -I FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")


def test_jumps_to_a_legacy_docker_chain_are_added_with_iptables_legacy():
    """A jump cannot cross backends: Docker's DOCKER chain in iptables-legacy is reached
    only from iptables-legacy's PREROUTING."""
    snap = without_jumps(healthy(), "PREROUTING", "OUTPUT")
    snap = replace(snap, rules=tuple(replace(r, backend="legacy") for r in snap.rules),
                   chains=tuple(replace(c, backend="legacy") for c in snap.chains),
                   port_forwards=tuple(replace(p, backend="legacy") for p in snap.port_forwards),
                   masquerades=tuple(replace(m, backend="legacy") for m in snap.masquerades))
    found = diagnose(snap)
    assert [f.id for f in found] == ["dnat-unreachable"]
    assert found[0].fix == (
        "ip netns exec bstX-host iptables-legacy -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "ip netns exec bstX-host iptables-legacy -t nat -A OUTPUT '!' -d 127.0.0.0/8 -m addrtype "
        "--dst-type LOCAL -j DOCKER")


def proxyless(snap: Snapshot) -> Snapshot:
    """Docker with --userland-proxy=false: the DNAT has no `! -i docker0`."""
    dnat = replace(rule("DOCKER", "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
                        target="DNAT", p="tcp", dport="8080"),
                   target_args=(("--to-destination", "172.17.0.2:80"),))
    pf = replace(snap.port_forwards[0], rule_text=dnat.text)
    return replace(snap, rules=tuple(r for r in snap.rules if r.target != "DNAT") + (dnat,),
                   port_forwards=(pf,))


def test_hairpin_off_only_for_proxyless_dnat():
    assert diagnose(healthy()) == ()  # `! -i docker0`: docker-proxy handles hairpin
    found = diagnose(proxyless(healthy()))
    assert [f.id for f in found] == ["hairpin-off"]
    assert found[0].objects[0] == f"{HOST}/if4"
    assert found[0].fix[0] == "ip -n bstX-host link set veth1a2b3c4 type bridge_slave hairpin on"
    assert diagnose(with_iface(proxyless(healthy()), f"{HOST}/if4", hairpin=True)) == ()


def test_br_netfilter_off_matters_only_with_rules_that_need_it():
    snap = healthy()
    host = replace(snap.namespaces[0], sysctls=(("net.ipv4.ip_forward", "1"),
                                                ("net.bridge.bridge-nf-call-iptables", "0")))
    snap = replace(snap, namespaces=(host, snap.namespaces[1]))
    assert diagnose(snap) == ()
    icc = rule("DOCKER-FORWARD", "-i docker0 -o docker0 -j DROP", table="filter", target="DROP",
               i="docker0", o="docker0")
    found = diagnose(replace(snap, rules=snap.rules + (icc,)))
    assert [f.id for f in found] == ["br-netfilter-off"]
    assert found[0].objects == (HOST, f"{HOST}/if3")


def test_split_brain():
    legacy = rule("POSTROUTING", "-s 10.9.0.0/24 -j MASQUERADE", backend="legacy",
                  target="MASQUERADE", s="10.9.0.0/24")
    found = diagnose(replace(healthy(), rules=healthy().rules + (legacy,)))
    assert [f.id for f in found] == ["split-brain"]
    assert "ip netns exec bstX-host iptables-legacy -t nat -F" in found[0].fix[-1]


def test_duplicate_rule():
    snap = replace(healthy(), rules=healthy().rules + (MASQ,))
    found = diagnose(snap)
    assert [f.id for f in found] == ["duplicate-rule"]
    assert found[0].fix == ("ip netns exec bstX-host iptables -t nat -D POSTROUTING -s 172.17.0.0/16 "
                            "'!' -o docker0 -j MASQUERADE",)


def test_duplicate_nftables_rules_are_deleted_each_by_its_own_handle_in_its_family():
    """netavark's table is `inet netavark`; `nft delete rule ip ...` names a table that does not
    exist, and the same handle twice deletes one copy and then fails."""
    copies = tuple(Rule(netns=HOST, backend="nftables", family=0, table="netavark", chain="NETAVARK-DNAT",
                        text="tcp dport 8080 dnat ip to 10.88.0.2:80", handle=handle)
                   for handle in (7, 9, 12))
    found = diagnose(replace(healthy(), rules=healthy().rules + copies))
    assert [f.id for f in found] == ["duplicate-rule"]
    assert found[0].fix == tuple(f"ip netns exec bstX-host nft delete rule inet netavark NETAVARK-DNAT handle {h}"
                                 for h in (9, 12))


def test_duplicate_ipv6_rule_is_deleted_with_ip6tables_of_its_backend():
    v6 = replace(rule("FORWARD", "-s fd00::/64 -j ACCEPT", table="filter", target="ACCEPT", s="fd00::/64"),
                 family=6, backend="legacy")
    found = diagnose(replace(healthy(), rules=healthy().rules + (v6, v6)))
    assert [f.id for f in found] == ["duplicate-rule"]
    assert found[0].fix == ("ip netns exec bstX-host ip6tables-legacy -t filter -D FORWARD -s fd00::/64 -j ACCEPT",)


def test_a_fix_that_deletes_a_rule_quotes_its_comment_for_the_shell():
    """The saved line's double quotes would let a pasted fix run `$(...)` in a comment."""
    import shlex

    text = '-s 10.9.0.0/24 -m comment --comment "$(touch /tmp/bs-pwned) \\"x\\"" -j MASQUERADE'
    evil = rule("POSTROUTING", text, target="MASQUERADE", s="10.9.0.0/24")
    found = diagnose(replace(healthy(), rules=healthy().rules + (evil, evil)))
    (fix,) = found[0].fix
    assert "'$(touch /tmp/bs-pwned) \"x\"'" in fix
    assert shlex.split(fix)[-4:] == ["--comment", '$(touch /tmp/bs-pwned) "x"', "-j", "MASQUERADE"]


def test_orphan_rule_points_at_an_address_nobody_has():
    gone = replace(rule("DOCKER", "-p tcp -m tcp --dport 9090 -j DNAT --to-destination 172.17.0.9:80",
                        target="DNAT", p="tcp", dport="9090"),
                   target_args=(("--to-destination", "172.17.0.9:80"),))
    found = diagnose(replace(healthy(), rules=healthy().rules + (gone,)))
    assert [f.id for f in found] == ["orphan-rule"]
    assert found[0].objects == (f"{HOST}/if3",)


def test_dnat_to_a_remote_machine_is_not_an_orphan():
    remote = replace(rule("DOCKER", "-p tcp -m tcp --dport 9090 -j DNAT --to-destination 198.51.100.7:80",
                          target="DNAT", p="tcp", dport="9090"),
                     target_args=(("--to-destination", "198.51.100.7:80"),))
    assert diagnose(replace(healthy(), rules=healthy().rules + (remote,))) == ()


def test_mtu_larger_than_the_uplink():
    found = diagnose(with_iface(healthy(), f"{HOST}/if2", mtu=1400))
    assert [f.id for f in found] == ["mtu-mismatch"]


def test_unrelated_broken_namespaces_are_out_of_scope():
    """Another namespace on the machine (not plugged into the host's bridges) is not ours to judge."""
    snap = healthy()
    other = Namespace(OTHER, "someone-elses", 3)
    down = Interface(f"{OTHER}/if2", OTHER, "eth0", 2, "veth", "down", 1500, None, ("10.1.0.2/32",))
    dup = rule("POSTROUTING", "-j MASQUERADE", target="MASQUERADE", netns=OTHER, backend="legacy")
    snap = replace(snap, namespaces=snap.namespaces + (other,), interfaces=snap.interfaces + (down,),
                   rules=snap.rules + (dup, dup))
    assert diagnose(snap) == ()


def test_findings_are_sorted_errors_first():
    snap = with_iface(healthy(), f"{CTR}/if1", state="down")  # warning
    snap = replace(snap, masquerades=(), rules=tuple(r for r in snap.rules if r is not MASQ))  # error
    assert [f.severity for f in diagnose(snap)] == ["error", "warning"]


def test_empty_snapshot():
    assert diagnose(Snapshot()) == ()


def test_masquerade_without_out_interface_catches_bridge_traffic_with_br_netfilter():
    bare = rule("POSTROUTING", "-s 172.17.0.0/16 -j MASQUERADE", target="MASQUERADE", s="172.17.0.0/16")
    masq = Masquerade(HOST, "172.17.0.0/16", None, "unknown", "nft", chain="POSTROUTING", rule_text=bare.text)
    snap = replace(healthy(), masquerades=(masq,), rules=(bare,) + tuple(r for r in healthy().rules if r is not MASQ))
    found = diagnose(snap)
    assert [(f.id, f.severity) for f in found] == [("masquerade-bridge-traffic", "warning")]
    assert found[0].fix[-1].endswith("-s 172.17.0.0/16 '!' -o docker0 -j MASQUERADE")
    host = replace(snap.namespaces[0], sysctls=(("net.ipv4.ip_forward", "1"),
                                                ("net.bridge.bridge-nf-call-iptables", "0")))
    assert diagnose(replace(snap, namespaces=(host, snap.namespaces[1]))) == ()


def test_masquerade_after_an_accept_for_the_subnet_like_cni_is_fine():
    accept = replace(rule("CNI-1", "-d 172.17.0.0/16 -j ACCEPT", target="ACCEPT", d="172.17.0.0/16"), position=1)
    bare = replace(rule("CNI-1", "! -d 224.0.0.0/4 -j MASQUERADE", target="MASQUERADE",
                        not_d="224.0.0.0/4"), position=2)
    masq = Masquerade(HOST, "172.17.0.0/16", None, "cni", "nft", destination="224.0.0.0/4",
                      dest_not=True, chain="CNI-1", rule_text=bare.text)
    snap = replace(healthy(), masquerades=(masq,), rules=(accept, bare) + tuple(r for r in healthy().rules if r is not MASQ))
    assert diagnose(snap) == ()


def test_fix_commands_address_each_kind_of_namespace():
    """Root host: plain commands; ip-netns names: ip -n; Docker's netns files: nsenter."""
    snap = healthy()
    root = replace(snap.namespaces[0], paths=(), name="host")
    docker = replace(snap.namespaces[1], paths=("/run/docker/netns/4cca5961632c",), name="web")
    snap = replace(snap, namespaces=(root, docker))
    snap = with_iface(with_iface(snap, f"{HOST}/if3", state="down"), f"{CTR}/if1", state="down")
    assert [f.fix for f in diagnose(snap)] == [
        ("ip link set docker0 up",),
        ("nsenter --net=/run/docker/netns/4cca5961632c ip link set lo up",)]


# ---- bridgescope's own forwards, passed in by the caller ----------------------------------

from bridgescope.collector.doctor import ForwardTarget  # noqa: E402
from bridgescope.collector.kernel.listeners import Listener, ListenerRead  # noqa: E402

ADOPTED = ForwardTarget("web", "172.17.0.2", "docker0", "tcp", 9090, 80, adopted=True)


def test_an_adopted_forward_whose_container_is_gone():
    assert diagnose(healthy(), forwards=(ADOPTED,)) == ()  # it is there: no finding
    snap = healthy()
    gone = replace(snap, namespaces=tuple(n for n in snap.namespaces if n.id != CTR),
                   interfaces=tuple(i for i in snap.interfaces if i.netns != CTR),
                   routes=tuple(r for r in snap.routes if r.netns != CTR))
    [found] = [f for f in diagnose(gone, forwards=(ADOPTED,)) if f.id == "forward-target-gone"]
    assert found.severity == "error" and "web (172.17.0.2 on docker0)" in found.title
    assert found.fix == ("bridgescope restore", "bridgescope forward rm web 9090:80/tcp")
    elsewhere = replace(ADOPTED, bridge="br-other")  # the address is now someone else's, elsewhere
    assert "forward-target-gone" in ids_of(diagnose(healthy(), forwards=(elsewhere,)))
    ours = replace(ADOPTED, adopted=False)  # our own containers are restore's business
    assert "forward-target-gone" not in ids_of(diagnose(gone, forwards=(ours,)))


def ids_of(findings) -> list[str]:
    return [f.id for f in findings]


def test_a_program_on_the_host_takes_a_forwarded_port():
    free = ListenerRead({HOST: frozenset({Listener("tcp", "0.0.0.0", 22)})})
    assert "port-taken" not in ids_of(diagnose(healthy(), listeners=free, forwards=(ADOPTED,)))
    taken = ListenerRead({HOST: frozenset({Listener("tcp", "::", 9090)})})
    [found] = [f for f in diagnose(healthy(), listeners=taken, forwards=(ADOPTED,))
               if f.id == "port-taken"]
    assert found.title == ("a process listens on tcp/9090 on the host, which bridgescope "
                           "forwards to web:80")
    assert found.fix[-1] == "bridgescope forward rm web 9090:80/tcp"
    udp = ListenerRead({HOST: frozenset({Listener("udp", "0.0.0.0", 9090)})})
    assert "port-taken" not in ids_of(diagnose(healthy(), listeners=udp, forwards=(ADOPTED,)))
    bound = replace(ADOPTED, host_ip="192.0.2.1")  # only that address, or a wildcard, takes it
    other = ListenerRead({HOST: frozenset({Listener("tcp", "127.0.0.1", 9090)})})
    assert "port-taken" not in ids_of(diagnose(healthy(), listeners=other, forwards=(bound,)))
    assert "port-taken" in ids_of(diagnose(healthy(), listeners=taken, forwards=(bound,)))
    unread = ListenerRead({})  # the host's sockets were not read: nothing is known
    assert "port-taken" not in ids_of(diagnose(healthy(), listeners=unread, forwards=(ADOPTED,)))
