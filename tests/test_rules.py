"""Our ruleset as data: what each object needs and how each backend renders it (pure)."""
from __future__ import annotations

from bridgescope.collector import shell
from bridgescope.collector.firewall.savefmt import parse_save
from bridgescope.plumbing import backends, rules
from bridgescope.plumbing.rules import Change
from bridgescope.plumbing.state import Container, Forward, Network, State

NET = Network("docker0", "172.17.0.0/16", "172.17.0.1")
C1 = Container("c1", "docker0", "172.17.0.2", "lab-host-c1", "veth1234567")
FWD = Forward("tcp", 8080, 80, container="c1")
STATE = State("lab", "nft", (NET,), (C1,), (FWD,))


def _shown(argvs):
    return [shell.line(a) for a in argvs]


def _lines(found):
    return [" ".join(rules.argv(r)) for r in found]


def test_network_has_dockers_masquerade_and_forward_accepts():
    text = _lines(rules.network_rules(NET))
    assert "-s 172.17.0.0/16 ! -o docker0 -m comment --comment bridgescope:net/docker0 -j MASQUERADE" in text
    assert "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment bridgescope:net/docker0 -j ACCEPT" in text
    assert "-i docker0 ! -o docker0 -m comment --comment bridgescope:net/docker0 -j ACCEPT" in text
    assert "-i docker0 -o docker0 -m comment --comment bridgescope:net/docker0 -j ACCEPT" in text
    # localhost publishing needs the src-LOCAL masquerade
    assert "-o docker0 -m addrtype --src-type LOCAL -m comment --comment bridgescope:net/docker0 -j MASQUERADE" in text


def test_no_masquerade_network_has_no_subnet_masquerade():
    quiet = Network("n1", "10.5.0.0/24", "10.5.0.1", masquerade=False)
    assert not any(r.src == "10.5.0.0/24" for r in rules.network_rules(quiet))


def test_forward_is_dnat_plus_accept_plus_hairpin_plus_localhost_guard():
    found = rules.forward_rules(FWD, C1, NET)
    shard = rules.shard_chain("X", FWD.tag)[-3:]  # all rules of one object share a shard
    by_table = {(r.table, r.chain, r.target) for r in found}
    assert by_table == {("nat", "BRIDGESCOPE-DNAT" + shard, "DNAT"),
                        ("nat", "BRIDGESCOPE-POSTROUTING" + shard, "MASQUERADE"),
                        ("filter", "BRIDGESCOPE-FORWARD" + shard, "ACCEPT"),
                        ("raw", "BRIDGESCOPE-PREROUTING" + shard, "DROP")}
    text = _lines(found)
    # No "! -i docker0" on the DNAT: proxy-less, so containers and the host are DNATed too.
    assert "-p tcp -m tcp --dport 8080 -m comment --comment bridgescope:fwd/c1/tcp/*/8080 -j DNAT --to-destination 172.17.0.2:80" in text
    assert "-s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment bridgescope:fwd/c1/tcp/*/8080 -j MASQUERADE" in text
    assert "-d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -m comment --comment bridgescope:fwd/c1/tcp/*/8080 -j ACCEPT" in text
    assert "-d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 8080 -m comment --comment bridgescope:fwd/c1/tcp/*/8080 -j DROP" in text


def test_host_ip_binding_restricts_dnat_and_drops_the_localhost_guard():
    bound = Forward("udp", 5353, 53, "192.0.2.2", "c1")
    found = rules.forward_rules(bound, C1, NET)
    dnat = next(r for r in found if r.target == "DNAT")
    assert dnat.dst == "192.0.2.2/32" and dnat.proto == "udp"
    assert not any(r.dst == "127.0.0.1/32" for r in found)
    local = Forward("tcp", 9000, 80, "127.0.0.1", "c1")
    assert any(r.dst == "127.0.0.1/32" and r.target == "DROP"
               for r in rules.forward_rules(local, C1, NET))


def test_jumps_enter_from_builtin_chains_with_addrtype_local():
    text = {(j.table, j.chain): " ".join(rules.argv(j)) for j in rules.jumps()}
    assert text[("nat", "PREROUTING")] == \
        "-m addrtype --dst-type LOCAL -m comment --comment bridgescope:jump -j BRIDGESCOPE-DNAT"
    assert text[("nat", "OUTPUT")] == text[("nat", "PREROUTING")]  # 127.0.0.1 too: no proxy
    assert set(text) == {("raw", "PREROUTING"), ("nat", "PREROUTING"), ("nat", "OUTPUT"),
                         ("nat", "POSTROUTING"), ("filter", "FORWARD")}


def test_objects_spread_over_shards_every_shard_is_entered_and_names_fit_iptables():
    shards = {rules.shard_chain("BRIDGESCOPE-DNAT", f"fwd/c{i}/tcp/*/{8000 + i}") for i in range(200)}
    assert len(shards) == rules.SHARDS
    entered = {(r.table, r.target) for r in rules.structure()}
    base = {c for _, c in rules.BASE_CHAINS}
    assert {(t, c) for t, c in rules.CHAINS if c not in base} == entered
    assert max(len(c) for _, c in rules.CHAINS) <= 28  # iptables' chain name limit
    # network rules stay in the base chains: few, and what a workshop reads first
    assert {r.chain for r in rules.network_rules(NET)} <= {c for _, c in rules.BASE_CHAINS}


def test_every_rule_is_tagged_and_in_our_chains():
    for r in rules.desired(STATE):
        assert r.chain.startswith("BRIDGESCOPE-")
        assert r.comment.startswith("bridgescope:")


def test_restore_text_declares_only_new_chains_and_inserts_jumps_first():
    change = Change(add=rules.network_rules(NET), new_chains=rules.CHAINS, add_jumps=rules.jumps())
    text = rules.restore_text(change)
    blocks = text.split("COMMIT\n")
    assert [b.split("\n", 1)[0] for b in blocks if b] == ["*raw", "*nat", "*filter"]
    assert ":BRIDGESCOPE-DNAT - [0:0]" in text
    assert "-I FORWARD 1 -m comment --comment bridgescope:jump -j BRIDGESCOPE-FORWARD" in text
    # Nothing but our own chains is declared (a declaration flushes in --noflush mode).
    declared = [l for l in text.splitlines() if l.startswith(":")]
    assert all(l.startswith(":BRIDGESCOPE-") for l in declared)


def test_restore_text_parses_back_into_the_same_rules():
    change = Change(add=rules.desired(STATE), new_chains=rules.CHAINS)
    parsed, chains = parse_save(rules.restore_text(change), netns="x", backend="nft", family=4)
    assert {c.name for c in chains} >= {c for _, c in rules.CHAINS}
    assert sorted(r.comment for r in parsed) == sorted(r.comment for r in rules.desired(STATE))
    dnat = next(r for r in parsed if r.target == "DNAT")
    assert dict(dnat.target_args)["--to-destination"] == "172.17.0.2:80"


def test_delete_is_by_spec_never_by_index():
    text = rules.restore_text(Change(delete=rules.forward_rules(FWD, C1, NET)))
    deletes = [line for line in text.splitlines() if line.startswith("-D")]
    assert len(deletes) == len(rules.forward_rules(FWD, C1, NET))
    for line in deletes:
        assert not line.split()[2].isdigit()


def test_inverse_undoes_housekeeping():
    change = Change(add=rules.network_rules(NET), new_chains=rules.CHAINS, add_jumps=rules.jumps())
    back = change.inverse()
    assert back.delete == change.add and back.drop_chains == rules.CHAINS
    assert back.del_jumps == rules.jumps() and not back.add
    assert back.inverse() == change


def test_teaching_commands_are_plain_iptables():
    cmds = _shown(rules.teaching_commands(Change(add=rules.forward_rules(FWD, C1, NET))))
    chain = rules.shard_chain("BRIDGESCOPE-DNAT", FWD.tag)
    # pasteable: the comment holds a glob character, so it is quoted
    assert f"iptables -t nat -A {chain} -p tcp -m tcp --dport 8080 -m comment --comment " \
           "'bridgescope:fwd/c1/tcp/*/8080' -j DNAT --to-destination 172.17.0.2:80" in cmds


def test_teaching_commands_summarise_the_shard_scaffolding_both_ways():
    # The first network on a host creates every chain of ours plus the jumps into the shards;
    # the explanation names the four chains a person would create and sums up the rest.
    setup = Change(add=rules.structure() + rules.network_rules(NET), new_chains=rules.CHAINS,
                   add_jumps=rules.jumps())
    cmds = _shown(rules.teaching_commands(setup))
    assert [c for c in cmds if " -N " in c] == [f"iptables -t {t} -N {c}" for t, c in rules.BASE_CHAINS]
    assert sum(c.startswith("#") for c in cmds) == 1
    assert not any(rules.SHARD_TAG in c and not c.startswith("#") for c in cmds)
    assert any("-j MASQUERADE" in c for c in cmds)
    teardown = _shown(rules.teaching_commands(setup.inverse()))
    assert [c for c in teardown if " -X " in c] == [f"iptables -t {t} -X {c}" for t, c in rules.BASE_CHAINS]
    assert not any("&&" in c for c in teardown) and sum(c.startswith("#") for c in teardown) == 1


def test_nft_text_replaces_our_table_atomically():
    text = rules.nft_text(rules.desired(STATE))
    assert text.startswith("table ip bridgescope {}\ndelete table ip bridgescope\n")
    assert "type nat hook prerouting priority dstnat" in text
    assert "fib daddr type local counter jump BRIDGESCOPE-DNAT" in text
    assert 'tcp dport 8080 counter dnat to 172.17.0.2:80 comment "bridgescope:fwd/c1/tcp/*/8080"' in text
    assert 'ip saddr 172.17.0.0/16 oifname != "docker0" counter masquerade' in text
    assert rules.nft_text(()) == "table ip bridgescope {}\ndelete table ip bridgescope\n"


# --- backend choice and idempotent housekeeping (pure parts of backends.py) --------------

DOCKER_NFT = "*filter\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER\nCOMMIT\n"


def _probe(nft="", legacy="", tables=(), version="iptables v1.8.9 (nf_tables)"):
    return backends.Probe(nft, legacy, tuple(tables), version)


def test_auto_follows_docker_then_rules_then_iptables_version():
    assert backends.choose("auto", _probe(nft=DOCKER_NFT), None) == "nft"
    assert backends.choose("auto", _probe(legacy=DOCKER_NFT), None) == "legacy"
    assert backends.choose("auto", _probe(tables=["ip docker-bridges"]), None) == "nftables"
    assert backends.choose("auto", _probe(legacy="*nat\n-A POSTROUTING -j X\n"), None) == "legacy"
    assert backends.choose("auto", _probe(), None) == "nft"
    assert backends.choose("auto", _probe(version="iptables v1.8.9 (legacy)"), None) == "legacy"


def test_legacy_is_refused_on_an_nft_host_and_switching_needs_an_empty_host():
    import pytest

    from bridgescope.plumbing.errors import ValidationError
    with pytest.raises(ValidationError, match="split the firewall"):
        backends.choose("legacy", _probe(nft=DOCKER_NFT), None)
    with pytest.raises(ValidationError, match="live in nft"):
        backends.choose("legacy", _probe(), "nft")
    with pytest.raises(ValidationError, match="not one of"):
        backends.choose("iptables", _probe(), None)
    assert backends.choose("auto", _probe(), "legacy") == "legacy"


def test_settle_skips_chains_and_jumps_that_exist():
    save = ("*nat\n:BRIDGESCOPE-DNAT - [0:0]\n:BRIDGESCOPE-POSTROUTING - [0:0]\n"
            "-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment bridgescope:jump "
            "-j BRIDGESCOPE-DNAT\nCOMMIT\n")
    change = Change(new_chains=rules.CHAINS, add_jumps=rules.jumps())
    settled = backends.settle(change, save)
    assert ("nat", "BRIDGESCOPE-DNAT") not in settled.new_chains
    assert ("filter", "BRIDGESCOPE-FORWARD") in settled.new_chains
    assert [(j.table, j.chain) for j in settled.add_jumps] == [
        ("raw", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"), ("filter", "FORWARD")]


def test_committed_tables_are_those_before_the_failing_line():
    text = "*raw\n-A X -j DROP\nCOMMIT\n*nat\n-A Y -j RETURN\nCOMMIT\n*filter\n-A Z -j ACCEPT\nCOMMIT\n"
    assert backends.committed_tables(text, "iptables-nft-restore: line 8 failed: No chain") == \
        ("raw", "nat")
    assert backends.committed_tables(text, "iptables-nft-restore: line 2 failed: x") == ()
    assert backends.committed_tables(text, "something else") == ()


def test_change_only_keeps_the_given_tables():
    change = Change(add=rules.forward_rules(FWD, C1, NET), new_chains=rules.BASE_CHAINS)
    nat = change.only(["nat"])
    assert {r.table for r in nat.add} == {"nat"} and {t for t, _ in nat.new_chains} == {"nat"}


def test_network_drops_unpublished_ports_after_every_per_port_accept():
    drop = "! -i docker0 -o docker0 -m comment --comment bridgescope:net/docker0 -j DROP"
    assert _lines(rules.network_rules(NET))[-1] == drop
    # The per-port accepts sit in shards, which the base chain enters before its own rules.
    every = rules.desired(STATE)
    in_base = [r for r in every if r.chain == rules.FORWARD_CHAIN]
    assert in_base[-1].target == "DROP"
    assert all(r.target.startswith(rules.FORWARD_CHAIN) for r in in_base[:rules.SHARDS])
    accepts = [r for r in every if r.dport is not None and r.table == "filter"]
    assert accepts and all(r.chain in rules.SHARD_CHAINS for r in accepts)
    assert 'iifname != "docker0" oifname "docker0" counter drop' in rules.nft_text(every)
