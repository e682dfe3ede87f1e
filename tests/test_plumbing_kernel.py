"""The write side against the real kernel, inside throwaway namespaces only.

A namespace from the `netns` fixture plays the host; container namespaces are named after it
(`<host>-<container>`), so the session sweep finds them too. State goes to a tmp dir.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reference_layouts
from conftest import sh
from hostpicture import picture, save_lines

from bridgescope.collector.kernel import tools
from bridgescope.plumbing import api
from bridgescope.plumbing import netns as nsops
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.steps import FAIL_AT_ENV

pytestmark = pytest.mark.kernel
BACKENDS = ("nft", "legacy", "nftables")

# Docker 29 after `docker run -p 8080:80` (reference 1.2), as iptables-nft-restore input.
DOCKER_29 = reference_layouts.DOCKER_29.iptables


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(FAIL_AT_ENV, raising=False)
    return tmp_path / "state"


@pytest.fixture
def host(netns) -> str:
    """A host namespace with an uplink (a veth pair kept inside it) and its route."""
    name = netns("host")
    sh("ip", "-n", name, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer")
    sh("ip", "-n", name, "addr", "add", "10.99.0.1/24", "dev", "uplink")
    sh("ip", "-n", name, "link", "set", "uplink", "up")
    sh("ip", "-n", name, "link", "set", "uplink-peer", "up")
    _wait_carrier(name, "uplink")  # else the "before" picture has routes flagged linkdown
    yield name
    for entry in sorted(os.listdir("/run/netns")):
        if entry.startswith(name + "-"):
            nsops.destroy(entry)


def _wait_carrier(ns: str, ifname: str) -> None:
    for _ in range(200):
        if json.loads(sh("ip", "-j", "link", "show", ifname, ns=ns).stdout)[0]["operstate"] == "UP":
            return
        time.sleep(0.01)
    raise AssertionError(f"{ifname} in {ns} never came up")


def answers(ns: str, ip: str) -> bool:
    """The address is reachable from ns: a TCP connect to a closed port is refused (RST),
    not timed out or unreachable (no ping on this machine)."""
    probe = ("import socket,sys\ntry: socket.create_connection((sys.argv[1], 9), 2)\n"
             "except ConnectionRefusedError: sys.exit(0)\nexcept OSError as e: sys.exit(str(e))")
    return sh(sys.executable, "-c", probe, ip, ns=ns, check=False).returncode == 0


def assert_same(after: dict, before: dict, what: str = "") -> None:
    """== on pictures, failing with only what differs (pytest's diff truncates these)."""
    diff = {k: {"gone": sorted(set(map(str, before[k])) - set(map(str, after[k]))),
                "new": sorted(set(map(str, after[k])) - set(map(str, before[k])))}
            for k in before if before[k] != after[k]}
    assert not diff, f"{what} {diff}"


def cli(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", *argv],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    if check:
        assert res.returncode == 0, res.stderr
    return res


def _build_everything(host: str, firewall: str) -> None:
    api.create_network("br0", "172.30.0.0/16", host=host, firewall=firewall)
    api.create_network("br1", "172.31.5.0/24", masquerade=False, host=host, firewall=firewall)
    api.create_container("web", "br0", ports=["8080:80", "127.0.0.1:9000:90"], host=host,
                         firewall=firewall)
    api.create_container("dns", "br1", ip="172.31.5.53", host=host, firewall=firewall)
    api.add_forward("dns", "5353:53/udp", host=host, firewall=firewall)
    api.add_forward("web", "7000-7002:70-72", host=host, firewall=firewall)


@pytest.mark.parametrize("firewall", BACKENDS)
def test_rm_of_everything_puts_the_host_back_exactly(host, firewall, state_dir):
    before = picture(host)
    _build_everything(host, firewall)
    built = picture(host)
    assert built != before
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=host).stdout.strip() == "1"
    assert {f"{host}-web", f"{host}-dns"} <= set(built["netns"])
    api.remove_forward("web", "7000-7002:70-72", host=host)
    api.remove_container("web", host=host)
    api.remove_network("br1", force=True, host=host)  # takes container dns with it
    api.remove_network("br0", host=host)
    assert_same(picture(host), before)
    assert api.load_state(host).networks == ()
    assert [p.name for p in state_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_container_is_wired_like_docker(host):
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", host=host)
    ctr = f"{host}-web"
    st = api.load_state(host)
    (c,) = st.containers
    assert c.ip == "172.30.0.2" and re.fullmatch(r"veth[0-9a-f]{7}", c.veth)
    addr = json.loads(sh("ip", "-4", "-j", "addr", "show", "eth0", ns=ctr).stdout)[0]
    assert [(i["local"], i["prefixlen"]) for i in addr["addr_info"]] == [("172.30.0.2", 16)]
    assert addr["operstate"] == "UP" and addr["mtu"] == 1500
    assert "state UP" in sh("ip", "link", "show", "lo", ns=ctr).stdout or \
        "LOOPBACK,UP" in sh("ip", "link", "show", "lo", ns=ctr).stdout
    assert sh("ip", "route", "show", "default", ns=ctr).stdout.split()[:3] == \
        ["default", "via", "172.30.0.1"]
    port = sh("ip", "-d", "link", "show", c.veth, ns=host).stdout
    assert "master br0" in port and "hairpin on" in port and "alias bridgescope:ctr/web" in port
    assert sh("sysctl", "-n", "net.ipv4.conf.br0.route_localnet", ns=host).stdout.strip() == "1"
    # the gateway answers from inside the container: links up, prefix right, route right
    assert answers(ctr, "172.30.0.1")
    # IPAM: next container gets the next address, never the gateway
    api.create_container("web2", "br0", host=host)
    assert api.load_state(host).container("web2").ip == "172.30.0.3"


def test_create_is_idempotent(host):
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", ports=["8080:80"], host=host)
    once = picture(host)
    assert "already exists" in api.create_network("br0", "172.30.0.0/16", host=host).summary
    assert "already exists" in api.create_container("web", "br0", ports=["8080:80"],
                                                    host=host).summary
    assert_same(picture(host), once)


@pytest.mark.parametrize("firewall", ("nft", "legacy"))
@pytest.mark.parametrize("step", [
    "create veth",
    "configure eth0",
    "add the firewall rules of container",
    "flush UDP conntrack",  # after the firewall transaction: its undo must run
    "set veth",  # the very last step: host end up
])
def test_failure_mid_create_leaves_nothing(host, monkeypatch, firewall, step):
    api.create_network("br0", "172.30.0.0/16", host=host, firewall=firewall)
    before, saved = picture(host), api.load_state(host)
    monkeypatch.setenv(FAIL_AT_ENV, step)
    with pytest.raises(PlumbingError) as err:
        api.create_container("web", "br0", ports=["8080:80", "5353:53/udp"], host=host)
    assert step in err.value.step and "nothing was changed" in str(err.value)
    assert_same(picture(host), before)
    assert api.load_state(host) == saved


def test_failure_mid_network_create_restores_forwarding(host, monkeypatch):
    before = picture(host)
    monkeypatch.setenv(FAIL_AT_ENV, "add the firewall rules of network")
    with pytest.raises(PlumbingError, match="add the firewall rules of network br0 failed"):
        api.create_network("br0", "172.30.0.0/16", host=host)
    assert_same(picture(host), before)


def test_docker_chains_stay_untouched(host):
    sh("iptables-nft-restore", ns=host, input=DOCKER_29)
    docker_before = save_lines(sh("iptables-nft-save", ns=host).stdout)
    api.create_network("br0", "172.30.0.0/16", host=host)  # auto must pick nft (Docker's)
    api.create_container("web", "br0", ports=["9090:80"], host=host)
    assert api.load_state(host).backend == "nft"
    during = save_lines(sh("iptables-nft-save", ns=host).stdout)
    assert [l for l in during if "BRIDGESCOPE" not in l] == docker_before
    assert not [l for l in during if "BRIDGESCOPE-" in l and "bridgescope:" not in l
                and not l.startswith(":")]
    assert not sh("cat", "/proc/net/ip_tables_names", ns=host).stdout.strip()  # no legacy tables
    api.remove_network("br0", force=True, host=host)
    assert save_lines(sh("iptables-nft-save", ns=host).stdout) == docker_before


def test_port_forwarded_by_docker_is_refused(host):
    sh("iptables-nft-restore", ns=host, input=DOCKER_29)
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", host=host)
    before = picture(host)
    with pytest.raises(ValidationError, match="8080/tcp is already forwarded .* by docker"):
        api.add_forward("web", "8080:80", host=host)
    assert_same(picture(host), before)


def test_legacy_is_refused_on_an_nft_host(host):
    sh("iptables-nft-restore", ns=host, input=DOCKER_29)
    before = picture(host)
    with pytest.raises(ValidationError, match="split the firewall"):
        api.create_network("br0", "172.30.0.0/16", host=host, firewall="legacy")
    assert_same(picture(host), before)


def test_port_listened_on_in_the_host_is_refused(host):
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", host=host)
    server = subprocess.Popen(tools.nsenter(f"/run/netns/{host}", [
        sys.executable, "-c", "import socket,time; s=socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 9191)); "
        "s.listen(); print('ok', flush=True); time.sleep(60)"]), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ok"
        with pytest.raises(ValidationError, match="listening on 0.0.0.0:9191"):
            api.add_forward("web", "9191:80", host=host)
    finally:
        server.kill()
        server.wait()


def test_bad_input_gives_one_line_and_changes_nothing(host):
    assert cli("network", "create", "br0", "--subnet", "172.30.0.0/16", "--netns", host).returncode == 0
    assert cli("container", "create", "web", "--network", "br0", "-p", "8080:80",
               "--netns", host).returncode == 0
    before = picture(host)
    cases = [
        (("network", "create", "a-very-long-name0", "--subnet", "10.50.0.0/24"), "longer than 15"),
        (("network", "create", "a/b", "--subnet", "10.50.0.0/24"), "'/'"),
        (("network", "create", "br2", "--subnet", "172.30.128.0/24"), "overlaps network br0"),
        (("network", "create", "br2", "--subnet", "10.99.0.0/16"), "collides with the existing route"),
        (("network", "create", "uplink", "--subnet", "10.50.0.0/24"), "interface named uplink"),
        (("network", "create", "br2", "--subnet", "10.50.0.1/24"), "CIDR"),
        (("forward", "add", "web", "0:80"), "outside 1-65535"),
        (("forward", "add", "web", "65536:80"), "outside 1-65535"),
        (("forward", "add", "web", "8080:80"), "already forwarded to container web"),
        (("forward", "add", "web", "8080:81/tcp"), "already forwarded"),
        (("forward", "add", "ghost", "8081:80"), "no container named ghost"),
        (("forward", "rm", "web", "8099:80"), "has no forward"),
        (("container", "rm", "ghost"), "no container named ghost"),
        (("container", "create", "web2", "--network", "nope"), "no network named nope"),
        (("container", "create", "web2", "--network", "br0", "--ip", "172.30.0.1"), "gateway"),
        (("container", "create", "web2", "--network", "br0", "--ip", "172.30.0.2"), "in use"),
        (("container", "create", "web2", "--network", "br0", "--ip", "10.0.0.5"), "not inside"),
        (("network", "rm", "br0"), "still has containers web"),
        (("network", "rm", "nope"), "no network named nope"),
    ]
    for argv, words in cases:
        res = cli(*argv, "--netns", host)
        assert res.returncode != 0, argv
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (argv, res.stderr)
        assert_same(picture(host), before, str(argv))


def test_unknown_host_namespace_is_one_line(host):
    res = cli("network", "create", "br0", "--subnet", "172.30.0.0/16", "--netns", host + "-nope")
    assert res.returncode == 1 and "does not exist" in res.stderr and len(res.stderr.splitlines()) == 1


def test_dry_run_prints_commands_and_changes_nothing(host):
    before = picture(host)
    res = cli("network", "create", "br0", "--subnet", "172.30.0.0/16", "--netns", host, "--dry-run",
              check=True)
    out = res.stdout
    assert f"ip -n {host} link add br0 type bridge" in out
    assert f"ip -n {host} addr add 172.30.0.1/16 dev br0" in out
    assert f"ip netns exec {host} sysctl -w net.ipv4.ip_forward=1" in out
    assert "iptables -t nat -A BRIDGESCOPE-POSTROUTING -s 172.30.0.0/16 '!' -o br0" in out
    assert "iptables -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL" in out
    assert_same(picture(host), before)
    cli("network", "create", "br0", "--subnet", "172.30.0.0/16", "--netns", host, check=True)
    res = cli("container", "create", "web", "--network", "br0", "-p", "8080:80", "--netns", host,
              "--dry-run", check=True)
    assert f"ip netns add {host}-web" in res.stdout
    assert "type veth peer name eth0 netns" in res.stdout
    assert f"ip -n {host}-web addr add 172.30.0.2/16 dev eth0" in res.stdout
    assert "-j DNAT --to-destination 172.30.0.2:80" in res.stdout
    assert not os.path.exists(f"/run/netns/{host}-web")


def test_restore_cleans_what_a_crash_left_and_rebuilds_what_vanished(host, state_dir):
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", ports=["8080:80"], host=host)
    settled = picture(host)
    state_file = state_dir / f"{host}.json"
    saved = state_file.read_text()
    # A crash after the kernel changed but before the state was written: the state file
    # still says "web only", the kernel also has "db" (tagged netns, veth, rules).
    api.create_container("db", "br0", ports=["5432:5432"], host=host)
    state_file.write_text(saved)
    api.restore(host=host)
    assert_same(picture(host), settled)
    # A "reboot" of the network side: bridge, container namespace and our chains gone.
    api_state = api.load_state(host)
    sh("ip", "link", "del", "br0", ns=host)
    nsops.destroy(f"{host}-web")
    sh("iptables-nft-restore", "--noflush", ns=host, input=(
        "*nat\n:BRIDGESCOPE-DNAT - [0:0]\nCOMMIT\n"))  # flushed by some firewall reload
    api.restore(host=host)
    assert api.load_state(host) == api_state
    after = picture(host)
    assert after["nft"] == settled["nft"] and after["netns"] == settled["netns"]
    assert sorted(a for a in after["addrs"] if a[0] != "br0") == \
        sorted(a for a in settled["addrs"] if a[0] != "br0")
    assert answers(f"{host}-web", "172.30.0.1")


def test_exec_runs_inside_the_container(host):
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", host=host)
    res = cli("container", "exec", "web", "--netns", host, "--", "ip", "-br", "addr", "show", "eth0")
    assert res.returncode == 0 and "172.30.0.2/16" in res.stdout
    assert cli("container", "exec", "web", "--netns", host, "--", "false").returncode == 1


def test_ipam_skips_an_address_used_by_something_we_did_not_make(host, netns):
    """A silent foreign container on our bridge (never ARPed): its address comes from a
    snapshot of the machine, taken because the bridge has a port that is not ours."""
    api.create_network("br0", "172.30.0.0/16", host=host)
    other = netns("other")
    sh("ip", "-n", host, "link", "add", "foreign0", "type", "veth", "peer", "name", "eth0",
       "netns", other)
    sh("ip", "-n", host, "link", "set", "foreign0", "master", "br0", "up")
    sh("ip", "-n", other, "addr", "add", "172.30.0.2/16", "dev", "eth0")
    with pytest.raises(ValidationError, match="172.30.0.2 is already in use"):
        api.create_container("web", "br0", ip="172.30.0.2", host=host)
    api.create_container("web", "br0", host=host)
    assert api.load_state(host).container("web").ip == "172.30.0.3"


def test_on_a_legacy_docker_host_we_write_legacy_and_see_dockers_forwards(host):
    sh("iptables-legacy-restore", ns=host, input=DOCKER_29)
    docker_before = save_lines(sh("iptables-legacy-save", ns=host).stdout)
    api.create_network("br0", "172.30.0.0/16", host=host)
    api.create_container("web", "br0", host=host)
    assert api.load_state(host).backend == "legacy"
    with pytest.raises(ValidationError, match="8080/tcp is already forwarded .* by docker"):
        api.add_forward("web", "8080:80", host=host)
    api.add_forward("web", "8081:80", host=host)
    during = save_lines(sh("iptables-legacy-save", ns=host).stdout)
    assert [l for l in during if "BRIDGESCOPE" not in l] == docker_before
    assert save_lines(sh("iptables-nft-save", ns=host).stdout) == []  # no split brain
    api.remove_network("br0", force=True, host=host)
    assert save_lines(sh("iptables-legacy-save", ns=host).stdout) == docker_before


def test_a_restore_failing_in_a_later_table_takes_back_the_earlier_ones(host):
    """iptables-nft-restore commits table by table; a failure in filter must not leave the
    nat part of the same change behind."""
    from bridgescope.plumbing import backends
    from bridgescope.plumbing.rules import Change, FwRule
    api.create_network("br0", "172.30.0.0/16", host=host)
    before = picture(host)
    good = FwRule("nat", "BRIDGESCOPE-DNAT", "DNAT", "test", proto="tcp", dport=7777,
                  to_destination="172.30.0.9:80")
    bad = FwRule("filter", "NO-SUCH-CHAIN", "ACCEPT", "test")
    with pytest.raises(PlumbingError, match="apply the iptables-nft rules failed"):
        backends.apply("nft", f"/run/netns/{host}", Change(add=(good, bad)), lambda: ())
    assert_same(picture(host), before)
