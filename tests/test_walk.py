"""The guided walk for real: every step in a throwaway lab, the doctor after each one, the
blog's wrong turns and their fixes, reset at any point, and nothing left behind."""
from __future__ import annotations

import os
import secrets

import pytest
from conftest import sh

from bridgescope.collector.doctor import diagnose
from bridgescope.plumbing import netns
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.lab import walklab
from bridgescope.plumbing.lab.probe import lab_snapshot, send
from bridgescope.plumbing.lab.walk import WalkNames, steps
from bridgescope.plumbing.lab.walklab import WalkLab

# What the doctor still says after each step: the walk clears one finding at a time.
EXPECTED = {
    "bridge": [],
    "gateway": ["link-down"],  # the bridge has an address but is down
    "bridge-up": [],
    "netns": [],
    "veth": [],
    "attach": ["ip-forward-off", "link-down", "link-down", "masquerade-missing"],
    "up": ["ip-forward-off", "masquerade-missing"],
    "address": ["ip-forward-off", "masquerade-missing", "no-default-route"],
    "route": ["ip-forward-off", "masquerade-missing"],
    "forwarding": ["masquerade-missing"],
    "masquerade": [],
    "server": [],
    "publish": [],
    "accept": [],
}


def test_steps_are_pure_data_with_commands_and_reasons():
    all_steps = steps(WalkNames("x"))
    assert [s.key for s in all_steps] == list(EXPECTED)
    assert all(s.commands and len(s.why) > 40 for s in all_steps)
    wrong = {s.key: s.wrong_turn.finding for s in all_steps if s.wrong_turn}
    assert wrong == {"address": "addr-no-prefix", "masquerade": "masquerade-mask-mismatch",
                     "publish": "dnat-unreachable"}
    assert all_steps[7].wrong_turn.commands[0].text == "ip -n x-web addr add 172.17.0.2 dev eth0"


@pytest.fixture
def walk(run_prefix):
    lab = WalkLab(f"{run_prefix}w{secrets.token_hex(1)}")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert_nothing_left(lab)


def assert_nothing_left(lab: WalkLab) -> None:
    assert not [n for n in os.listdir("/run/netns") if n.startswith(lab.names.prefix)]
    assert not lab.progress_file.exists()


def findings(lab: WalkLab) -> list[str]:
    return sorted(f.id for f in diagnose(lab_snapshot(lab.names.host, lab.names.prefix)))


def ns_id(lab: WalkLab, name: str) -> str:
    snap = lab_snapshot(lab.names.host, lab.names.prefix)
    return next(n.id for n in snap.namespaces if n.name == name)


@pytest.mark.kernel
def test_every_step_clears_what_the_doctor_says(walk):
    for step in walk.steps:
        outcome = walk.apply(step.key)
        assert outcome.ok, outcome.ran
        assert findings(walk) == EXPECTED[step.key], step.key
    assert set(walk.progress().values()) == {"done"}
    assert walk.next_step() is None
    client = send(walk.names.host, ns_id(walk, walk.names.client), walklab.HOST_UPLINK, 8080,
                  prefix=walk.names.prefix)
    assert client.reply == "web saw 198.51.100.2"
    out = send(walk.names.host, ns_id(walk, walk.names.container), "203.0.113.10", 80,
               prefix=walk.names.prefix)
    assert out.reply == f"internet saw {walklab.HOST_UPLINK}"


def walk_until(lab: WalkLab, key: str) -> None:
    for step in lab.steps:
        if step.key == key:
            return
        assert lab.apply(step.key).ok


@pytest.mark.kernel
def test_the_address_without_prefix_breaks_the_route_until_fixed(walk):
    walk_until(walk, "address")
    assert walk.wrong_turn("address").ok
    assert sh("ip", "-n", walk.names.container, "-br", "addr", "show", "eth0").stdout.split()[2] == "172.17.0.2/32"
    assert "addr-no-prefix" in findings(walk)
    route = walk.apply("route")
    assert not route.ok and "Nexthop has invalid gateway" in route.ran[-1].output
    assert walk.progress()["route"] == "failed"
    assert walk.fix("address").ok
    assert walk.apply("route").ok
    assert findings(walk) == EXPECTED["route"]


@pytest.mark.kernel
def test_the_blogs_masquerade_and_dnat_without_a_jump(walk):
    walk_until(walk, "masquerade")
    walk.wrong_turn("masquerade")
    assert findings(walk) == ["masquerade-mask-mismatch"]
    walk.fix("masquerade")
    assert findings(walk) == []
    walk.apply("server")
    walk.wrong_turn("publish")
    assert findings(walk) == ["dnat-unreachable"]
    client = ns_id(walk, walk.names.client)
    refused = send(walk.names.host, client, walklab.HOST_UPLINK, 8080, prefix=walk.names.prefix)
    assert not refused.connected and refused.moved == ()
    walk.fix("publish")
    assert findings(walk) == []
    works = send(walk.names.host, client, walklab.HOST_UPLINK, 8080, prefix=walk.names.prefix)
    assert works.reply == "web saw 198.51.100.2"


@pytest.mark.kernel
def test_reset_midway_starts_over_with_a_bare_host(walk):
    walk_until(walk, "server")
    walk.apply("server")
    walk.reset()
    assert set(walk.progress().values()) == {"pending"}
    assert not netns.exists(walk.names.container)
    links = sh("ip", "-n", walk.names.host, "-br", "link").stdout
    assert "docker0" not in links and "uplink" in links
    assert sh("iptables-nft-save", ns=walk.names.host).stdout.count("-A ") == 0
    assert walk.apply("bridge").ok


@pytest.mark.kernel
def test_actions_out_of_order_or_unknown_are_refused_and_change_nothing(walk):
    with pytest.raises(ValidationError, match="do step 'Create the bridge' first"):
        walk.apply("route")
    with pytest.raises(ValidationError, match="no walk step called"):
        walk.apply("rm -rf")
    with pytest.raises(ValidationError, match="has no wrong turn"):
        walk.wrong_turn("bridge")
    with pytest.raises(ValidationError, match="needs it to be wrong"):
        walk.fix("bridge")
    walk.apply("bridge")
    with pytest.raises(ValidationError, match="is done"):
        walk.apply("bridge")
    assert [k for k, v in walk.progress().items() if v != "pending"] == ["bridge"]


@pytest.mark.parametrize("prefix", ["", "bad prefix", "a/b", "x" * 21])
def test_bad_prefix(prefix):
    with pytest.raises(ValidationError):
        WalkLab(prefix)


@pytest.mark.kernel
def test_actions_need_a_running_lab(run_prefix):
    lab = WalkLab(f"{run_prefix}wz")
    with pytest.raises(ValidationError, match="not running"):
        lab.apply("bridge")
    assert_nothing_left(lab)
