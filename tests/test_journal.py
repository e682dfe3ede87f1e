"""The write-ahead journal: a `bridgescope` process killed (-9) at any point of a change, then
the next command, `serve` or `restore` finds the kernel and the saved state in agreement.

The crash is real: BRIDGESCOPE_CRASH_AT makes the CLI child SIGKILL itself right before the
plan's step N, after the last step, or after the state save (plumbing/steps.py). Traffic goes
through the sandbox lab (a client namespace -> the lab host's uplink -> a container's echo
server), so "never misrouted" is what a real TCP connection sees.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import serve_process
from conftest import RUN_PREFIX, sh
from test_plumbing_kernel import assert_same, host, picture  # noqa: F401 - fixtures

from bridgescope.collector.doctor import diagnose
from bridgescope.collector.kernel.snapshot import collect
from bridgescope.plumbing import api, journal
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.lab import sandbox as lab
from bridgescope.plumbing.steps import CRASH_AT_ENV, FAIL_AT_ENV

pytestmark = pytest.mark.kernel

PORT = "9090"
# A forward add is one firewall transaction: killed before it, after it (both before the state
# save, the commit point: rolled back), after the state save (completed).
FORWARD_POINTS = ("step 0", "save", "clear")
COMMITTED = "clear"


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(FAIL_AT_ENV, raising=False)
    monkeypatch.delenv(CRASH_AT_ENV, raising=False)
    return tmp_path / "state"


@pytest.fixture
def lab_info():
    prefix = f"{RUN_PREFIX}{secrets.token_hex(2)}"
    try:
        yield lab.lab_up(prefix)
    finally:
        lab.lab_down(prefix)


def cli(*argv: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT_ENV}
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", *argv],
                          capture_output=True, text=True, timeout=120, env=env)


def crashed(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr)


def reaches(info: lab.LabInfo, port: str) -> str | None:
    """Who answers a real HTTP request from the lab's client to the host's published port."""
    res = sh("curl", "-s", "-m", "3", f"http://{info.host_ip}:{port}/", ns=info.client, check=False)
    return res.stdout.split()[0] if res.returncode == 0 and res.stdout else None


def dnat_lines(ns: str, port: str) -> list[str]:
    return [l for l in sh("iptables-nft-save", "-t", "nat", ns=ns).stdout.splitlines()
            if "DNAT" in l and f"--dport {port} " in l]


def _serve_once(host: str) -> None:
    port = serve_process.free_port()
    proc = serve_process.start(host, port, args=["--no-auth"])
    try:
        serve_process.wait_until_answering(proc, f"http://127.0.0.1:{port}/", timeout=60)
    finally:
        serve_process.stop(proc)


def _recover_by(entry: str, host: str) -> None:
    if entry == "restore":
        res = cli("restore", "--netns", host)
        assert res.returncode == 0, res.stderr
    elif entry == "serve":
        _serve_once(host)
    else:
        raise AssertionError(entry)


@pytest.mark.parametrize("point", FORWARD_POINTS)
def test_killed_forward_add_then_the_next_command_rolls_it_back(lab_info, point, state_dir):
    """The issue's case: without the journal, a rule the state never recorded kept the port,
    the next forward on it was accepted, and its traffic went to the first container."""
    host = lab_info.host
    before, saved = picture(host), api.load_state(host)
    crashed(cli("forward", "add", "c1", f"{PORT}:80", "--netns", host, crash_at=point))
    assert journal.pending(host) is not None
    res = cli("forward", "add", "c2", f"{PORT}:80", "--netns", host)
    assert journal.pending(host) is None
    if point == COMMITTED:  # c1's forward was saved: it holds the port, and traffic goes there
        assert res.returncode == 1 and "already forwarded to container c1" in res.stderr
        assert reaches(lab_info, PORT) == "c1" and len(dnat_lines(host, PORT)) == 1
        return
    assert res.returncode == 0, res.stderr
    assert "rolled back an interrupted change (forward 9090:80/tcp -> c1" in res.stderr
    assert reaches(lab_info, PORT) == "c2"
    assert len(dnat_lines(host, PORT)) == 1
    assert [f.container for f in api.load_state(host).forwards if f.host_port == 9090] == ["c2"]
    # and taking it away again gives exactly the host before the crash
    assert cli("forward", "rm", "c2", f"{PORT}:80", "--netns", host).returncode == 0
    assert_same(picture(host), before)
    assert api.load_state(host) == saved


@pytest.mark.parametrize("entry", ("restore", "serve"))
@pytest.mark.parametrize("point", FORWARD_POINTS)
def test_killed_forward_add_then_restore_or_serve_rolls_it_back(lab_info, point, entry):
    host = lab_info.host
    before, saved = picture(host), api.load_state(host)
    crashed(cli("forward", "add", "c1", f"{PORT}:80", "--netns", host, crash_at=point))
    _recover_by(entry, host)
    assert journal.pending(host) is None
    if point == COMMITTED:
        assert [f.container for f in api.load_state(host).forwards if f.host_port == 9090] == ["c1"]
        assert reaches(lab_info, PORT) == "c1" and len(dnat_lines(host, PORT)) == 1
        return
    assert_same(picture(host), before)
    assert api.load_state(host) == saved
    assert reaches(lab_info, PORT) is None  # refused, not forwarded to c1
    assert reaches(lab_info, "8080") == "c1"  # the lab's own forward still works
    api.add_forward("c2", f"{PORT}:80", host=host)
    assert reaches(lab_info, PORT) == "c2"


# Every step of each kind of change, on a bare host (the crash points of the plan, and the one
# after it, before the state save); `restore` must give back exactly the host before it.
CHANGES = {
    "network create": (("network", "create", "br1", "--subnet", "172.31.0.0/24"), 3),
    "container create": (("container", "create", "web", "--network", "br0", "-p", "8080:80",
                          "-p", "5353:53/udp"), 6),
    "container rm": (("container", "rm", "old"), 3),
    "network rm": (("network", "rm", "br0", "--force"), 6),
}


@pytest.mark.parametrize("change", CHANGES)
def test_killed_at_every_step_of_every_change_then_restore_puts_the_host_back(host, change):
    argv, n_steps = CHANGES[change]
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("old", "br0", ports=["7070:70"], host=host)
    before, saved = picture(host), api.load_state(host)
    for point in [f"step {i}" for i in range(n_steps)] + ["save"]:
        crashed(cli(*argv, "--netns", host, crash_at=point))
        res = cli("restore", "--netns", host)
        assert res.returncode == 0 and "rolled back an interrupted change" in res.stderr, \
            (point, res.stderr)
        assert_same(picture(host), before, f"{change} killed at {point}:")
        assert api.load_state(host) == saved, point
    # the plan really has that many steps: one more point is never reached
    assert cli(*argv, "--netns", host, crash_at=f"step {n_steps}").returncode == 0


def test_killed_first_network_create_puts_forwarding_back_off(host):
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=host)
    before = picture(host)
    crashed(cli("network", "create", "br0", "--subnet", "172.30.0.0/16", "--netns", host,
                crash_at="save"))
    assert sh("sysctl", "-n", "net.ipv4.ip_forward", ns=host).stdout.strip() == "1"
    assert api.recover(host=host) is not None
    assert_same(picture(host), before)
    assert api.recover(host=host) is None  # nothing pending any more


def test_orphaned_forward_holds_its_port_and_the_doctor_reports_it(lab_info, state_dir):
    """A crash the journal cannot repair (an older bridgescope, a lost journal): the rule is
    in the kernel, no state owns it. The port check refuses the port, the doctor names it,
    `restore` clears it."""
    host = lab_info.host
    crashed(cli("forward", "add", "c1", f"{PORT}:80", "--netns", host, crash_at="save"))
    journal.path_for(host).unlink()
    with pytest.raises(ValidationError, match=r"9090/tcp is already forwarded to 172\.17\.0\.\d+:80 "
                       r"by an orphaned bridgescope rule \(bridgescope:fwd/c1/tcp/\*/9090\).*restore"):
        api.add_forward("c2", f"{PORT}:80", host=host)
    found = [f for f in diagnose(collect(host), api.owned_tags(host)) if f.id == "orphan-rule"]
    assert len(found) == 1 and "bridgescope:fwd/c1/tcp/*/9090" in found[0].title
    assert found[0].fix[0] == f"bridgescope restore --netns {host}"
    doctor = cli("doctor", "--json", "--netns", host)
    assert [f["id"] for f in json.loads(doctor.stdout)["findings"]] == ["orphan-rule"]
    assert cli("restore", "--netns", host).returncode == 0
    assert [f for f in diagnose(collect(host), api.owned_tags(host)) if f.id == "orphan-rule"] == []
    api.add_forward("c2", f"{PORT}:80", host=host)
    assert reaches(lab_info, PORT) == "c2"


def test_orphan_from_an_edited_state_file_is_seen_despite_the_port_cache(lab_info, state_dir):
    """The cache of other tools' forwards is stamped with the forwards the state owns: putting
    back an older state file (no nf_tables change at all) must not hide the orphan."""
    host = lab_info.host
    state_file = state_dir / f"{host}.json"
    older = state_file.read_text()
    api.add_forward("c1", f"{PORT}:80", host=host)
    api.add_forward("c2", "9191:80", host=host)  # the cache is warm and current
    state_file.write_text(older)
    with pytest.raises(ValidationError, match="orphaned bridgescope rule"):
        api.add_forward("c2", f"{PORT}:80", host=host)


def test_a_failed_change_carries_the_commands_that_ran_and_were_undone(host, monkeypatch):
    api.create_network("br0", "172.30.0.0/16", host=host)
    monkeypatch.setenv(FAIL_AT_ENV, "configure eth0")
    with pytest.raises(PlumbingError) as err:
        api.create_container("web", "br0", host=host)
    commands = err.value.commands
    assert f"ip netns add {host}-web" in commands
    assert any("type veth peer name eth0" in c for c in commands)
    assert f"ip -n {host}-web addr add 172.30.0.2/16 dev eth0" in commands  # the failing one
    assert journal.pending(host) is None  # undone in full: nothing to recover
