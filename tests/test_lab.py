"""The sandbox lab end to end: real traffic through the plumbing, on each firewall backend.

Each test builds its own lab under this run's prefix, so labs never collide, and tears it
down in a finalizer even when the test fails.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RUN_PREFIX, sh

from bridgescope.collector.kernel import tools
from bridgescope.plumbing import api
from bridgescope.plumbing import netns as nsops
from bridgescope.plumbing.lab import sandbox as lab
from bridgescope.plumbing.lab import walklab
from bridgescope.webui import cli

pytestmark = pytest.mark.kernel

UDP_ASK = ("import socket,sys\n"
           "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
           "s.sendto(b'hi', (sys.argv[1], int(sys.argv[2])))\n"
           "print(s.recvfrom(100)[0].decode().strip())\n")


@pytest.fixture
def lab_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))
    prefix = f"{RUN_PREFIX}{secrets.token_hex(2)}"
    yield prefix
    lab.lab_down(prefix)


def http(ns: str, url: str) -> str:
    return sh("curl", "-s", "-m", "5", url, ns=ns).stdout.strip()


def udp(ns: str, ip: str, port: int) -> str:
    return sh(sys.executable, "-c", UDP_ASK, ip, str(port), ns=ns).stdout.strip()


def _lab_names(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix + "-"))


@pytest.mark.parametrize("firewall", ("nft", "legacy", "nftables"))
def test_lab_traffic_end_to_end(lab_prefix, firewall):
    info = lab.lab_up(lab_prefix, firewall=firewall)
    host, client = info.host, info.client
    assert api.load_state(host).backend == firewall
    c1, c2 = dict(info.containers)["c1"], dict(info.containers)["c2"]
    # A client outside the host reaches c1 through the published port; DNAT keeps its address.
    assert http(client, f"http://{info.host_ip}:8080/") == f"c1 saw {info.client_ip}"
    # c1 reaches the internet; MASQUERADE makes it show up as the host's uplink address.
    assert http(f"{host}-c1", f"http://{info.internet_ip}/") == f"internet saw {info.host_ip}"
    # Hairpin: c2 and c1 itself through the host's published port.
    assert http(f"{host}-c2", f"http://{info.host_ip}:8080/").startswith("c1 saw ")
    assert http(f"{host}-c1", f"http://{info.host_ip}:8080/") == "c1 saw 172.17.0.1"
    # The host's own localhost (route_localnet + src-LOCAL masquerade).
    assert http(host, "http://127.0.0.1:8080/") == "c1 saw 172.17.0.1"
    # The unpublished port of c2 is not reachable from outside (no DNAT, direct access dropped).
    assert sh("curl", "-s", "-m", "2", f"http://{info.host_ip}:80/", ns=client,
              check=False).returncode != 0
    # A UDP forward, to a server in c2.
    server = subprocess.Popen(tools.nsenter(f"/run/netns/{host}-c2", [
        sys.executable, "-m", "bridgescope.plumbing.lab.echo_server", "c2-udp", "53", "--udp"]))
    try:
        api.add_forward("c2", "5353:53/udp", host=host)
        _wait_udp(host + "-c2", 53)
        assert udp(client, info.host_ip, 5353) == f"c2-udp saw {info.client_ip}"
        assert c1 != c2
    finally:
        server.kill()
        server.wait()


def _wait_udp(ns: str, port: int) -> None:
    from bridgescope.plumbing import conflicts
    for _ in range(200):
        if any(l.port == port for l in conflicts.listeners(f"/run/netns/{ns}") if l.proto == "udp"):
            return
        time.sleep(0.02)
    raise AssertionError("udp server did not start")


def test_lab_up_is_idempotent_and_down_leaves_nothing(lab_prefix, tmp_path):
    first = lab.lab_up(lab_prefix)
    rules = sh("iptables-nft-save", ns=first.host).stdout
    rules_lines = sorted(l for l in rules.splitlines() if l.startswith("-A"))
    again = lab.lab_up(lab_prefix)
    assert again == first
    assert sorted(l for l in sh("iptables-nft-save", ns=first.host).stdout.splitlines()
                  if l.startswith("-A")) == rules_lines
    assert http(first.client, f"http://{first.host_ip}:8080/") == f"c1 saw {first.client_ip}"
    # Only our echo servers: other tools on this machine may watch every namespace.
    servers = [pid for ns in _lab_names(lab_prefix) for pid in nsops.pids_in(f"/run/netns/{ns}")
               if b"echo_server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(servers) == 3  # c1, c2 and the internet
    lab.lab_down(lab_prefix)
    assert _lab_names(lab_prefix) == []
    assert all(_gone(pid) for pid in servers)
    assert list((tmp_path / "state").glob(f"*{lab_prefix}*")) == []
    lab.lab_down(lab_prefix)  # twice is fine


def _gone(pid: int) -> bool:
    """Dead or a zombie (lab_up's parent is this test process, which reaps lazily)."""
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_lab_cli(lab_prefix):
    env = os.environ.copy()
    up = subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "lab", "up", "--prefix",
                         lab_prefix], capture_output=True, text=True, env=env, timeout=120)
    assert up.returncode == 0, up.stderr
    assert f"{lab_prefix}-host" in up.stdout and lab.HOST_UPLINK in up.stdout
    down = subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "lab", "down", "--prefix",
                           lab_prefix], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _lab_names(lab_prefix) == []


def test_lab_down_with_a_prefix_touches_only_that_prefixs_labs(lab_prefix, monkeypatch):
    """`lab down --prefix P` used to remove the default walk lab too, whatever P was."""
    default_walk = f"{RUN_PREFIX}w{secrets.token_hex(2)}"  # stands in for bswalk, never the real one
    other = f"{RUN_PREFIX}o{secrets.token_hex(2)}"
    monkeypatch.setattr(walklab, "DEFAULT_PREFIX", default_walk)
    walk = walklab.WalkLab(default_walk)
    try:
        walk.up()
        lab.wire_uplinks(*lab.names(other))
        lab.wire_uplinks(*lab.names(lab_prefix))
        assert cli.main(["lab", "down", "--prefix", lab_prefix]) == 0
        assert _lab_names(lab_prefix) == []
        assert _lab_names(other) == sorted(lab.names(other))
        assert _lab_names(default_walk) == sorted((walk.names.host, walk.names.inet, walk.names.client))
        assert walk.progress_file.exists()
    finally:
        walk.down()
        lab.lab_down(other)
    assert _lab_names(default_walk) == [] and _lab_names(other) == []


UDP_FROM_PORT = ("import socket,sys\n"
                 "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
                 "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                 "s.bind(('0.0.0.0', 40000))\n"
                 "s.sendto(b'hi', (sys.argv[1], int(sys.argv[2])))\n"
                 "print(s.recvfrom(100)[0].decode().strip())\n")


def _udp_server(ns: str, name: str) -> subprocess.Popen:
    proc = subprocess.Popen(tools.nsenter(f"/run/netns/{ns}", [
        sys.executable, "-m", "bridgescope.plumbing.lab.echo_server", name, "53", "--udp"]))
    _wait_udp(ns, 53)
    return proc


def test_udp_forward_moved_to_another_container_follows_at_once(lab_prefix):
    """Without the conntrack flush, the client's flow (same source port) would keep going to
    the old container until it has been quiet for the UDP timeout."""
    info = lab.lab_up(lab_prefix)
    servers = [_udp_server(f"{info.host}-c1", "c1-udp"), _udp_server(f"{info.host}-c2", "c2-udp")]
    try:
        api.add_forward("c1", "5353:53/udp", host=info.host)
        ask = [sys.executable, "-c", UDP_FROM_PORT, info.host_ip, "5353"]
        assert sh(*ask, ns=info.client).stdout.strip() == f"c1-udp saw {info.client_ip}"
        api.remove_forward("c1", "5353:53/udp", host=info.host)
        api.add_forward("c2", "5353:53/udp", host=info.host)
        assert sh(*ask, ns=info.client).stdout.strip() == f"c2-udp saw {info.client_ip}"
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def test_forward_bound_to_a_host_address(lab_prefix):
    info = lab.lab_up(lab_prefix)
    api.add_forward("c2", "127.0.0.1:9000:80", host=info.host)
    api.add_forward("c2", f"{info.host_ip}:9001:80", host=info.host)
    assert http(info.host, "http://127.0.0.1:9000/") == "c2 saw 172.17.0.1"
    # bound to loopback: not reachable from outside, not even by naming the uplink address
    assert sh("curl", "-s", "-m", "2", f"http://{info.host_ip}:9000/", ns=info.client,
              check=False).returncode != 0
    assert http(info.client, f"http://{info.host_ip}:9001/") == f"c2 saw {info.client_ip}"
    assert sh("curl", "-s", "-m", "2", "http://127.0.0.1:9001/", ns=info.host,
              check=False).returncode != 0


def test_lab_up_with_another_firewall_is_refused_and_keeps_the_lab(lab_prefix):
    info = lab.lab_up(lab_prefix, firewall="nft")
    from bridgescope.plumbing.errors import ValidationError
    with pytest.raises(ValidationError, match="live in nft"):
        lab.lab_up(lab_prefix, firewall="legacy")
    assert http(info.client, f"http://{info.host_ip}:8080/") == f"c1 saw {info.client_ip}"


@pytest.mark.parametrize("firewall", ("nft", "nftables"))
def test_only_published_ports_reach_a_container_from_outside_its_bridge(lab_prefix, firewall):
    info = lab.lab_up(lab_prefix, firewall=firewall)
    host, client = info.host, info.client
    c2 = dict(info.containers)["c2"]
    # c2 listens on 80 but publishes nothing. Another tool's DNAT sends a host port to it: the
    # raw guard cannot see that (it runs before NAT), our per-bridge drop must.
    sh("iptables-nft", "-t", "nat", "-I", "PREROUTING", "-p", "tcp", "--dport", "8081", "-j", "DNAT",
       "--to-destination", f"{c2}:80", ns=host)
    refused = sh("curl", "-s", "-m", "2", f"http://{info.host_ip}:8081/", ns=client, check=False)
    assert refused.returncode == 28, refused  # timed out: dropped, not refused
    assert http(client, f"http://{info.host_ip}:8080/") == f"c1 saw {info.client_ip}"  # published
    assert http(f"{host}-c1", f"http://{c2}/") == "c2 saw " + dict(info.containers)["c1"]  # bridge
    assert http(f"{host}-c2", f"http://{info.internet_ip}/") == f"internet saw {info.host_ip}"  # out


def test_doctor_reports_a_host_program_on_a_forwarded_port(lab_prefix):
    import json
    info = lab.lab_up(lab_prefix)

    def doctor() -> list[dict]:
        res = subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "doctor", "--json",
                              "--netns", info.host], capture_output=True, text=True, timeout=120,
                             env=os.environ.copy())
        assert res.returncode in (0, 2), res.stderr
        return json.loads(res.stdout)["findings"]

    assert not [f for f in doctor() if f["id"] == "port-taken"]
    squatter = subprocess.Popen(tools.nsenter(f"/run/netns/{info.host}", [
        sys.executable, "-I", "-c", "import socket,time\ns=socket.socket()\n"
        "s.bind(('0.0.0.0', 8080)); s.listen(); time.sleep(60)"]))
    try:
        for _ in range(200):
            if any(l.port == 8080 for l in nsops_listeners(info.host)):
                break
            time.sleep(0.02)
        [taken] = [f for f in doctor() if f["id"] == "port-taken"]
        assert taken["title"].startswith("a process listens on tcp/8080 on the host")
        assert "c1:80" in taken["title"]
    finally:
        squatter.kill()
        squatter.wait()


def nsops_listeners(ns: str):
    from bridgescope.plumbing import conflicts
    return conflicts.listeners(f"/run/netns/{ns}")
