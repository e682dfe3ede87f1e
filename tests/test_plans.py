"""Planning from recorded kernel facts: no root, no kernel (plan.py is pure), except the one
test that proves a preview names the veth the change then makes.

The facts are what facts.gather would have read; a plan is the steps, their commands and the
state after, for given facts, state and request.
"""
from __future__ import annotations

import ipaddress
import re
import shlex

import pytest

from bridgescope.collector import shell
from bridgescope.collector.hostview import in_ns
from bridgescope.collector.model import Namespace, PortForward
from bridgescope.plumbing import api, backends, facts, links, plan, rules, validate
from bridgescope.plumbing import netns as nsops
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.lab.walk import Command
from bridgescope.plumbing.plan import Facts
from bridgescope.plumbing.state import Container, Forward, Network, State

HOST = nsops.HostNs("lab", "lab", "/run/netns/lab")
NFT_HOST = backends.Probe(nft_save="", legacy_save="", nft_tables=(),
                          iptables_version="iptables v1.8.9 (nf_tables)")
NET = Network("br0", "172.30.0.0/16", "172.30.0.1")
WEB = Container("web", "br0", "172.30.0.2", "lab-web", "veth0aaaaaa")
NO_FACTS = Facts()
ONE = State("lab", "nft", (NET,), (WEB,), (Forward("tcp", 8080, 80, container="web"),),
            (("net.ipv4.ip_forward", "0"),))


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch):
    """Planning must not read the kernel: every way the plumbing reaches it fails here."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("planning touched the kernel")
    for name in ("with_netlink", "run_in", "run_command", "read_sysctl", "exists"):
        monkeypatch.setattr(nsops, name, refuse)
    monkeypatch.setattr(backends, "probe", refuse)


def planned(st: State, request: plan.Request, found: Facts = NO_FACTS) -> plan.Plan:
    return plan.plan(HOST, found, st, request)


def test_first_network_from_facts():
    found = planned(State("lab"), plan.CreateNetwork(NET, "auto"),
                    Facts(probe=NFT_HOST, ip_forward="0"))
    assert found.after.backend == "nft" and found.after.networks == (NET,)
    assert found.after.sysctls_before == (("net.ipv4.ip_forward", "0"),)  # put back at the end
    cmds = found.commands
    assert cmds[:4] == ("ip -n lab link add br0 type bridge",
                        "ip -n lab link set br0 mtu 1500 alias bridgescope:net/br0",
                        "ip -n lab addr add 172.30.0.1/16 dev br0",
                        "ip -n lab link set br0 up")
    assert "ip netns exec lab sysctl -w net.ipv4.ip_forward=1" in cmds
    assert "ip netns exec lab iptables -t nat -A BRIDGESCOPE-POSTROUTING -s 172.30.0.0/16 '!' " \
           "-o br0 -m comment --comment bridgescope:net/br0 -j MASQUERADE" in cmds


def test_network_refused_by_the_facts():
    with pytest.raises(ValidationError, match="an interface named br0 already exists"):
        planned(State("lab"), plan.CreateNetwork(NET), Facts(probe=NFT_HOST, ip_forward="0",
                                                             links=frozenset({"br0"})))
    route = ((ipaddress.IPv4Network("172.30.5.0/24"), "eth9"),)
    with pytest.raises(ValidationError, match="collides with the existing route 172.30.5.0/24 dev eth9"):
        planned(State("lab"), plan.CreateNetwork(NET), Facts(probe=NFT_HOST, routes=route))
    assert not planned(ONE, plan.CreateNetwork(NET)).changes  # already there: nothing to do


def test_container_from_facts_takes_the_first_free_address_and_the_gathered_veth():
    seen = frozenset({ipaddress.IPv4Address("172.30.0.3")})  # someone else's, on the bridge
    found = planned(ONE, plan.CreateContainer("db", "br0", None, validate.port_spec("5432:5432")),
                    Facts(used=seen, veth="veth1234567"))
    ctr = found.after.container("db")
    assert ctr == Container("db", "br0", "172.30.0.4", "lab-db", "veth1234567")
    assert found.after.forwards[-1] == Forward("tcp", 5432, 5432, container="db")
    cmds = found.commands
    assert cmds[:2] == ("ip netns add lab-db", "ip -n lab-db link set lo up")
    assert "ip -n lab link add veth1234567 mtu 1500 master br0 type veth peer name eth0 " \
           "netns lab-db" in cmds
    assert "ip -n lab-db addr add 172.30.0.4/16 dev eth0" in cmds
    assert cmds[-1] == "ip -n lab link set veth1234567 up"  # the host end last, as Docker
    assert found.summary == "container db 172.30.0.4/16 on br0, 5432:5432/tcp"


def test_container_refused_by_the_facts():
    docker = PortForward("lab", "tcp", None, 8443, "172.17.0.2", 443, "docker", "nft")
    with pytest.raises(ValidationError, match="already forwarded to 172.17.0.2:443 by docker"):
        planned(ONE, plan.CreateContainer("db", "br0", None, validate.port_spec("8443:443")),
                Facts(foreign=(docker,), veth="veth1234567"))
    with pytest.raises(ValidationError, match="lab-db already exists"):
        planned(ONE, plan.CreateContainer("db", "br0"), Facts(netns=frozenset({"lab-db"}),
                                                              veth="veth1234567"))


def test_forward_add_and_remove():
    added = planned(ONE, plan.AddForwards("web", validate.port_spec("127.0.0.1:9191:91/udp")))
    assert added.after.forwards[-1] == Forward("udp", 9191, 91, "127.0.0.1", "web")
    assert added.commands[-1] == "ip netns exec lab conntrack -D -p udp --dport 9191"
    removed = planned(added.after, plan.RemoveForwards("web", validate.port_spec("127.0.0.1:9191:91/udp")))
    assert removed.after == ONE
    assert all(" -D " in c for c in removed.commands[:-1])
    with pytest.raises(ValidationError, match="has no forward 9:9/tcp"):
        planned(ONE, plan.RemoveForwards("web", validate.port_spec("9:9")))


def test_remove_container_and_network():
    gone = planned(ONE, plan.RemoveContainer("web"))
    assert gone.commands[-2:] == ("ip -n lab link del veth0aaaaaa", "ip netns del lab-web")
    assert gone.after.containers == () and gone.after.forwards == ()
    with pytest.raises(ValidationError, match="still has containers web"):
        planned(ONE, plan.RemoveNetwork("br0"))
    last = planned(ONE, plan.RemoveNetwork("br0", force=True))
    assert last.after == State("lab")  # the last network: backend and sysctls forgotten
    assert last.commands[-1] == "ip netns exec lab sysctl -w net.ipv4.ip_forward=0"


def test_restore_from_facts_cleans_leftovers_and_rebuilds_what_is_missing():
    found = planned(ONE, plan.Restore(), Facts(tagged=(("br0", "net/br0"), ("vethdead", "ctr/gone")),
                                               our_netns=("lab-gone",), netns=frozenset()))
    whats = [s.what for s in found.steps]
    assert whats[:2] == ["delete leftover interface vethdead (ctr/gone)", "delete leftover namespace lab-gone"]
    assert "create bridge br0" not in whats  # its tag is there
    assert "clear what is left of container web" in whats  # its namespace is not
    assert "ip -n lab link add veth0aaaaaa mtu 1500 master br0 type veth peer name eth0 " \
           "netns lab-web" in found.commands  # the saved name, not a new one
    assert whats[-1] == "rewrite the bridgescope chains" and not found.save


def test_dry_run_is_the_plan_of_the_facts():
    request = plan.CreateContainer("db", "br0", None, validate.port_spec("5432:5432"))
    found = planned(ONE, request, Facts(veth="veth1234567"))
    shown = api._execute(found, True, None)  # runs nothing: the steps' actions would fail here
    assert shown.commands == found.commands == planned(ONE, request, Facts(veth="veth1234567")).commands
    assert shown.summary == f"dry run, nothing changed: {found.summary}"


def test_veth_name_is_the_containers_identity():
    # the same name in every process and release: a restart finds its veths by it
    assert links.veth_name("lab", "web") == "veth1509fed"
    assert links.veth_name("lab", "web", 1) == "vethfb4a47a"
    assert re.fullmatch(r"veth[0-9a-f]{7}", links.veth_name("lab", "web"))
    assert len({links.veth_name("lab", "web"), links.veth_name("lab", "db"),
                links.veth_name("other", "web"), links.veth_name("lab", "web", 1)}) == 4


def test_a_forwards_preview_formats_like_every_other_command():
    """The rule comment holds '*': every formatter quotes it the same way, so it pastes."""
    found = planned(ONE, plan.AddForwards("web", validate.port_spec("9191:91")))
    dnat = next(c for c in found.commands if "-j DNAT" in c)
    argv = shlex.split(dnat)
    assert argv[:4] == ["ip", "netns", "exec", "lab"]
    tag = "bridgescope:fwd/web/tcp/*/9191"
    assert tag in argv and f"'{tag}'" in dnat
    panel_ns = Namespace("ns-1", "lab", 1, paths=("/run/netns/lab",))
    assert dnat == in_ns(panel_ns, *argv[4:]) == shell.in_netns("lab", argv[4:])
    assert Command(tuple(argv)).text == dnat
    plain = rules.command("-A", rules.forward_rules(Forward("tcp", 9191, 91, container="web"), WEB, NET)[0])
    assert shell.in_netns("lab", plain) == dnat


@pytest.mark.kernel
def test_the_preview_names_the_veth_the_change_makes(monkeypatch, netns, tmp_path):
    monkeypatch.undo()  # this one reads and changes the (throwaway) kernel
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))
    host = netns("plan")
    try:
        api.create_network("br0", "172.30.0.0/16", host=host)
        preview = api.create_container("web", "br0", ports=["8080:80"], host=host, dry_run=True)
        applied = api.create_container("web", "br0", ports=["8080:80"], host=host)
        veth = api.load_state(host).container("web").veth
        assert preview.commands == applied.commands
        assert any(f"link add {veth} " in c for c in preview.commands)
        ns = nsops.resolve(host)
        gathered = facts.gather(ns, api.load_state(host), plan.CreateContainer("db", "br0"))
        assert gathered.veth == links.veth_name(ns.key, "db") and gathered.netns == frozenset()
        assert ipaddress.IPv4Address("172.30.0.1") in gathered.used
    finally:
        api.remove_network("br0", force=True, host=host)


def test_a_network_drops_unpublished_ports_after_its_accepts_and_removes_the_drop_with_it():
    made = planned(State("lab"), plan.CreateNetwork(NET, "auto"), Facts(probe=NFT_HOST, ip_forward="1"))
    drop = ("ip netns exec lab iptables -t filter -A BRIDGESCOPE-FORWARD '!' -i br0 -o br0 -m comment "
            "--comment bridgescope:net/br0 -j DROP")
    forward_chain = [c for c in made.commands if " BRIDGESCOPE-FORWARD " in c and "-j BRIDGESCOPE" not in c]
    assert forward_chain[-1] == drop  # after the bridge's own accepts
    gone = planned(ONE, plan.RemoveNetwork("br0", force=True))
    assert drop.replace(" -A ", " -D ") in gone.commands


def test_reconcile_keeps_an_adopted_forward_while_its_engine_is_silent():
    """A daemon that is restarting answers nothing: its container is not gone until it says so."""
    from bridgescope.plumbing import adopt
    web = adopt.Candidate("web", "172.17.0.2", "docker0", "/run/docker/netns/abc", 11,
                          ("/run/docker/netns/abc",), "docker", "e" * 64)
    st = State("lab", "nft", forwards=(Forward("tcp", 9090, 80, container="web"),),
               adopted=(web.adopted("DOCKER-USER"),))
    silent = planned(st, plan.Reconcile("auto"), Facts(candidates=()))
    assert silent.after == st and not silent.steps
    said_gone = planned(st, plan.Reconcile("auto"), Facts(engines_answered=frozenset({"docker"})))
    assert said_gone.after.forwards == () and said_gone.after.adopted == ()
    assert "the container is gone" in said_gone.summary
