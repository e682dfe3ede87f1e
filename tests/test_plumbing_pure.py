"""Pure parts of the write side: step rollback, IPAM, conflict rules, state persistence."""
from __future__ import annotations

import ipaddress
import json

import pytest

from bridgescope.collector.model import Interface, PortForward, Snapshot
from bridgescope.plumbing import conflicts, ipam, state, steps
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.state import Container, Forward, Network, State
from bridgescope.plumbing.steps import Step


def test_failure_undoes_done_steps_in_reverse_and_names_the_step():
    log = []

    def boom():
        raise OSError(17, "File exists")
    plan = [Step("first", lambda: log.append("do1"), lambda: log.append("undo1")),
            Step("second", lambda: log.append("do2"), lambda: log.append("undo2")),
            Step("create bridge br0", boom, lambda: log.append("undo3"))]
    with pytest.raises(PlumbingError) as err:
        steps.run(plan)
    assert log == ["do1", "do2", "undo2", "undo1"]
    assert err.value.step == "create bridge br0"
    assert str(err.value) == "create bridge br0 failed: File exists (nothing was changed)"


def test_undo_problems_are_reported_and_do_not_stop_the_rollback():
    log = []

    def bad_undo():
        raise OSError(1, "Operation not permitted")

    def boom():
        raise RuntimeError("nope")
    plan = [Step("a", lambda: log.append("a"), lambda: log.append("undo a")),
            Step("b", lambda: None, bad_undo), Step("c", boom)]
    with pytest.raises(PlumbingError) as err:
        steps.run(plan)
    assert log == ["a", "undo a"]
    assert "could not undo: b (Operation not permitted)" in str(err.value)


def test_injected_failure_is_matched_by_step_words(monkeypatch):
    log = []
    monkeypatch.setenv(steps.FAIL_AT_ENV, "second")
    with pytest.raises(PlumbingError, match="second failed: injected failure"):
        steps.run([Step("first", lambda: log.append(1), lambda: log.append(-1)),
                   Step("second", lambda: log.append(2))])
    assert log == [1, -1]


def test_validation_errors_inside_a_step_pass_through_after_rollback():
    log = []

    def invalid():
        raise ValidationError("ip", "bad")
    with pytest.raises(ValidationError):
        steps.run([Step("x", lambda: log.append(1), lambda: log.append(-1)), Step("y", invalid)])
    assert log == [1, -1]


NET = ipaddress.IPv4Network("10.1.0.0/29")
GW = ipaddress.IPv4Address("10.1.0.1")


def test_ipam_skips_gateway_and_used_and_runs_out_cleanly():
    used = {ipaddress.IPv4Address("10.1.0.2"), ipaddress.IPv4Address("10.1.0.4")}
    assert str(ipam.next_free(NET, GW, used)) == "10.1.0.3"
    full = set(NET.hosts())
    with pytest.raises(ValidationError, match="no free address left in 10.1.0.0/29"):
        ipam.next_free(NET, GW, full)


def test_ipam_requested_address_is_checked():
    used = {ipaddress.IPv4Address("10.1.0.2")}
    assert str(ipam.check_requested(NET, GW, "10.1.0.5", used)) == "10.1.0.5"
    for bad, words in (("10.1.0.1", "gateway"), ("10.1.0.2", "already in use"),
                       ("10.1.0.7", "broadcast"), ("10.2.0.1", "not inside"), ("x", "not an IPv4")):
        with pytest.raises(ValidationError, match=words):
            ipam.check_requested(NET, GW, bad, used)


def test_ipam_reads_addresses_from_a_snapshot():
    snap = Snapshot(interfaces=(
        Interface("ns-1/if2", "ns-1", "eth0", 2, "veth", "up", 1500, None,
                  addresses=("10.1.0.3/29", "fe80::1/64")),
        Interface("ns-2/if2", "ns-2", "eth0", 2, "veth", "up", 1500, None,
                  addresses=("192.168.1.5/24",)),
    ))
    assert ipam.addresses_in(snap, NET) == {ipaddress.IPv4Address("10.1.0.3")}


def _pf(owner, port=8080, ip=None, proto="tcp"):
    return PortForward("ns-1", proto, ip, port, "172.17.0.2", 80, owner, "nft")


def test_conflicts_by_owner_address_and_listener():
    m = Forward("tcp", 8080, 80)
    ours = (Forward("tcp", 8080, 80, container="web"),)
    assert "by bridgescope" in conflicts.find_conflict(m, ours, (), ())
    assert "by docker" in conflicts.find_conflict(m, (), (_pf("docker"),), ())
    assert conflicts.find_conflict(m, (), (_pf("docker", proto="udp"),), ()) is None
    # different host addresses do not collide; "any" collides with everything
    bound = Forward("tcp", 8080, 80, "192.0.2.2")
    assert conflicts.find_conflict(bound, (), (_pf("cni", ip="192.0.2.3"),), ()) is None
    assert "by cni" in conflicts.find_conflict(bound, (), (_pf("cni"),), ())
    listener = conflicts.Listener("tcp", "0.0.0.0", 8080)
    assert "listening on 0.0.0.0:8080" in conflicts.find_conflict(m, (), (), (listener,))
    assert conflicts.find_conflict(Forward("tcp", 8081, 80), (), (), (listener,)) is None


def test_a_program_on_an_ipv4_mapped_ipv6_address_holds_the_port():
    """The same socket test as the verdicts and the doctor: `::ffff:192.0.2.2` takes 192.0.2.2's."""
    mapped = conflicts.Listener("tcp", "::ffff:192.0.2.2", 8080)
    assert "listening on ::ffff:192.0.2.2:8080" in conflicts.find_conflict(
        Forward("tcp", 8080, 80, "192.0.2.2"), (), (), (mapped,))
    assert conflicts.find_conflict(Forward("tcp", 8080, 80, "192.0.2.3"), (), (), (mapped,)) is None


def test_state_roundtrip_is_atomic_and_empty_state_removes_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))
    st = State("lab", "nft", (Network("br0", "10.1.0.0/24", "10.1.0.1"),),
               (Container("c1", "br0", "10.1.0.2", "lab-c1", "veth0000001"),),
               (Forward("udp", 53, 53, "192.0.2.2", "c1"),), (("net.ipv4.ip_forward", "0"),))
    state.save(st)
    assert state.load("lab") == st
    assert json.loads((tmp_path / "lab.json").read_text())["forwards"][0][1] == "udp"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    state.save(State("lab"))
    assert not (tmp_path / "lab.json").exists()
    assert state.load("lab") == State("lab")


def test_state_dir_defaults_to_var_lib(monkeypatch):
    monkeypatch.delenv("BRIDGESCOPE_STATE_DIR", raising=False)
    assert str(state.state_dir()) == "/var/lib/bridgescope"
