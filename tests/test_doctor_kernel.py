"""The doctor against the real kernel: a throwaway host namespace with one container, built
with the real ip/iptables/nft tools, healthy in each runtime's layout - then broken in exactly
one way per finding id. Each breakage must yield that finding and no other."""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from conftest import sandbox_lab, sh
from reference_layouts import CNI, DOCKER_27, DOCKER_29, DOCKER_29_NOPROXY, HEALTHY, Layout

from bridgescope.collector.doctor import diagnose
from bridgescope.collector.kernel.namespaces import discover, resolve_netns
from bridgescope.collector.kernel.snapshot import scan
from bridgescope.collector.model import Snapshot

pytestmark = pytest.mark.kernel


@dataclass(frozen=True)
class Site:
    host: str
    ctr: str
    layout: Layout

    @property
    def gateway_ip(self) -> str:
        return self.layout.gateway.split("/")[0]

    @property
    def container_ip(self) -> str:
        return self.layout.container.split("/")[0]

    def ip(self, ns: str, *argv: str) -> None:
        sh("ip", "-n", ns, *argv)

    def iptables(self, *argv: str, tool: str = "iptables-nft") -> None:
        sh(tool, *argv, ns=self.host)


def build(netns, layout: Layout, *, container_cidr: str | None = None, route: bool = True) -> Site:
    host, ctr, world = netns("host"), netns("c1"), netns("world")
    site = Site(host, ctr, layout)
    # the host's uplink: a veth to a stand-in for the outside world
    site.ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", world)
    site.ip(world, "addr", "add", "192.0.2.1/24", "dev", "up0")
    site.ip(world, "link", "set", "up0", "up")
    site.ip(host, "addr", "add", "192.0.2.10/24", "dev", "eth0")
    site.ip(host, "link", "set", "eth0", "up")
    site.ip(host, "route", "add", "default", "via", "192.0.2.1")
    site.ip(host, "link", "add", layout.bridge, "type", "bridge")
    site.ip(host, "addr", "add", layout.gateway, "dev", layout.bridge)
    site.ip(host, "link", "set", layout.bridge, "up")
    site.ip(host, "link", "add", "vethc1", "type", "veth", "peer", "name", "eth0", "netns", ctr)
    site.ip(host, "link", "set", "vethc1", "master", layout.bridge)
    site.ip(host, "link", "set", "vethc1", "type", "bridge_slave", "hairpin",
            "on" if layout.hairpin else "off")
    site.ip(host, "link", "set", "vethc1", "up")
    site.ip(ctr, "addr", "add", container_cidr or layout.container, "dev", "eth0")
    site.ip(ctr, "link", "set", "eth0", "up")
    if route:
        site.ip(ctr, "route", "add", "default", "via", site.gateway_ip)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=host)
    sh("sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={layout.br_netfilter}", ns=host)
    if layout.iptables:
        sh("iptables-nft-restore", ns=host, input=layout.iptables)
    if layout.nft:
        sh("nft", "-f", "-", ns=host, input=layout.nft)
    return site


def snapshot(host: str) -> Snapshot:
    """The test's own namespaces only: the machine may hold hundreds of others' namespaces."""
    prefix = host.rsplit("-", 1)[0]
    return scan([n for n in discover(resolve_netns(host)) if n.name.startswith(prefix)])


def finding_ids(site: Site) -> list[str]:
    return [f.id for f in diagnose(snapshot(site.host))]


@pytest.mark.parametrize("layout", HEALTHY, ids=lambda l: l.name)
def test_healthy_runtime_layouts_yield_nothing(netns, layout):
    site = build(netns, layout)
    snap = snapshot(site.host)
    assert any(p.netns == snap.host for p in snap.port_forwards), "the published port was read"
    assert diagnose(snap) == ()


def test_ip_forward_off(netns):
    site = build(netns, DOCKER_29)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=site.host)
    assert finding_ids(site) == ["ip-forward-off"]


@pytest.mark.parametrize("where,dev,severity", [
    ("host", "docker0", "error"), ("host", "vethc1", "error"),
    ("ctr", "eth0", "error"), ("ctr", "lo", "warning")])
def test_link_down(netns, where, dev, severity):
    site = build(netns, DOCKER_29)
    site.ip(getattr(site, where), "link", "set", dev, "down")
    found = diagnose(snapshot(site.host))
    assert [(f.id, f.severity) for f in found] == [("link-down", severity)]
    assert f"link set {dev} up" in found[0].fix[0]


def test_address_without_prefix_the_blog_way(netns):
    # `ip addr add 172.17.0.2 dev eth0` -> /32; the default route then cannot be added at all
    site = build(netns, DOCKER_29, container_cidr="172.17.0.2", route=False)
    failed = sh("ip", "-n", site.ctr, "route", "add", "default", "via", site.gateway_ip, check=False)
    assert failed.returncode != 0
    found = diagnose(snapshot(site.host))
    assert [f.id for f in found] == ["addr-no-prefix"]
    for command in found[0].fix:  # the fix, applied, makes the doctor happy
        sh(*command.split())
    assert finding_ids(site) == []


def test_no_default_route(netns):
    site = build(netns, DOCKER_29)
    site.ip(site.ctr, "route", "del", "default")
    assert finding_ids(site) == ["no-default-route"]


def test_masquerade_missing(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-t", "nat", "-D", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
                  "-j", "MASQUERADE")
    assert finding_ids(site) == ["masquerade-missing"]


def test_masquerade_with_the_blogs_mask(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-t", "nat", "-D", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
                  "-j", "MASQUERADE")
    site.iptables("-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.2/24", "-j", "MASQUERADE")
    assert finding_ids(site) == ["masquerade-mask-mismatch"]


def test_masquerade_without_out_interface(netns):
    site = build(netns, DOCKER_29_NOPROXY)  # br_netfilter on
    site.iptables("-t", "nat", "-R", "POSTROUTING", "2", "-s", "172.17.0.0/16", "-j", "MASQUERADE")
    assert finding_ids(site) == ["masquerade-bridge-traffic"]


def test_dnat_without_a_jump(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER")
    site.iptables("-t", "nat", "-D", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype",
                  "--dst-type", "LOCAL", "-j", "DOCKER")
    assert finding_ids(site) == ["dnat-unreachable"]


def test_dnat_not_from_host(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-t", "nat", "-D", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype",
                  "--dst-type", "LOCAL", "-j", "DOCKER")
    assert finding_ids(site) == ["dnat-not-from-host"]


def publish_on_localhost(site: Site, *, raw_drop: bool) -> None:
    """docker run -p 127.0.0.1:8081:80 as Docker writes it (28+ adds the raw DROP)."""
    site.iptables("-t", "nat", "-A", "DOCKER", "-d", "127.0.0.1/32", "!", "-i", "docker0", "-p", "tcp",
                  "-m", "tcp", "--dport", "8081", "-j", "DNAT", "--to-destination", "172.17.0.2:80")
    if raw_drop:
        site.iptables("-t", "raw", "-A", "PREROUTING", "-d", "127.0.0.1/32", "!", "-i", "lo", "-p",
                      "tcp", "-m", "tcp", "--dport", "8081", "-j", "DROP")


def test_port_published_on_localhost_is_healthy_with_dockers_raw_drop(netns):
    site = build(netns, DOCKER_29)
    publish_on_localhost(site, raw_drop=True)
    assert finding_ids(site) == []  # OUTPUT skips 127/8 on purpose: docker-proxy serves it


def test_port_published_on_localhost_without_the_raw_drop_is_exposed(netns):
    site = build(netns, DOCKER_29)
    publish_on_localhost(site, raw_drop=False)
    assert finding_ids(site) == ["loopback-port-exposed"]


def test_forward_blocked_when_the_published_port_has_no_accept(netns):
    site = build(netns, DOCKER_27)  # <= 27 relies on the DROP policy, no per-bridge DROP rule
    site.iptables("-D", "DOCKER", "-d", "172.17.0.2/32", "!", "-i", "docker0", "-o", "docker0",
                  "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "ACCEPT")
    assert finding_ids(site) == ["forward-blocked"]


def test_forward_blocked_for_outbound(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-D", "DOCKER-FORWARD", "-i", "docker0", "-j", "ACCEPT")
    found = diagnose(snapshot(site.host))
    assert [f.id for f in found] == ["forward-blocked"]
    assert "-i docker0" in found[0].fix[0]


def test_forward_blocked_by_the_legacy_policy_beside_iptables_nft(netns):
    """Docker's accepts in iptables-nft, an iptables-legacy filter table with FORWARD policy
    DROP (a Docker 20.10 host): the legacy policy decides, so the fix is there."""
    site = build(netns, DOCKER_29)
    site.iptables("-P", "FORWARD", "DROP", tool="iptables-legacy")
    found = diagnose(snapshot(site.host))
    assert [f.id for f in found] == ["forward-blocked"]
    assert "iptables-legacy filter table's FORWARD chain has policy DROP" in found[0].title
    assert found[0].fix == (f"ip netns exec {site.host} iptables-legacy -P FORWARD ACCEPT",)
    sh(*found[0].fix[0].split())
    assert finding_ids(site) == []


def test_hairpin_off_with_proxyless_dnat(netns):
    site = build(netns, DOCKER_29_NOPROXY)
    site.ip(site.host, "link", "set", "vethc1", "type", "bridge_slave", "hairpin", "off")
    assert finding_ids(site) == ["hairpin-off"]


def test_br_netfilter_off_where_docker_relies_on_it(netns):
    site = build(netns, DOCKER_29_NOPROXY)
    sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", ns=site.host)
    assert finding_ids(site) == ["br-netfilter-off"]


def test_split_brain(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-t", "filter", "-A", "INPUT", "-s", "198.51.100.0/24", "-j", "DROP",
                  tool="iptables-legacy")
    assert finding_ids(site) == ["split-brain"]


def test_duplicate_rule(netns):
    site = build(netns, DOCKER_29)
    site.iptables("-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
                  "-j", "MASQUERADE")
    assert finding_ids(site) == ["duplicate-rule"]


def test_orphan_rule_after_a_container_went_away(netns):
    site = build(netns, CNI)
    site.iptables("-t", "nat", "-A", "POSTROUTING", "-s", "10.22.0.9/32", "-j", "MASQUERADE")
    assert finding_ids(site) == ["orphan-rule"]


def test_mtu_larger_than_the_uplink(netns):
    site = build(netns, DOCKER_29)
    site.ip(site.host, "link", "set", "eth0", "mtu", "1400")
    assert finding_ids(site) == ["mtu-mismatch"]


@pytest.fixture
def lab(run_prefix):
    with sandbox_lab(run_prefix) as info:
        yield info


def test_the_bridgescope_lab_is_healthy(lab):
    snap = snapshot(lab.host)
    assert [p.host_port for p in snap.port_forwards if p.netns == snap.host] == [8080]
    assert diagnose(snap) == ()


def test_lab_with_the_blogs_masquerade_instead_of_ours(lab):
    """A wrong turn on a real bridgescope host: the doctor names exactly it."""
    sh("iptables", "-t", "nat", "-D", "BRIDGESCOPE-POSTROUTING", "-s", "172.17.0.0/16", "!", "-o",
       "docker0", "-m", "comment", "--comment", "bridgescope:net/docker0", "-j", "MASQUERADE",
       ns=lab.host)
    sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.2/24", "-j", "MASQUERADE",
       ns=lab.host)
    found = diagnose(snapshot(lab.host))
    # c1 and c2 (.2, .3) still fit in 172.17.0.0/24: a warning, not yet an outage
    assert [(f.id, f.severity) for f in found] == [("masquerade-mask-mismatch", "warning")]


def run_cli(*argv: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "doctor", *argv],
                          capture_output=True, text=True, timeout=600)


def listening_in(ns: str, port: int):
    """A socket listening on 0.0.0.0:port inside namespace ns, for as long as it is open."""
    import socket

    from bridgescope.collector.kernel.setns import run_in

    def bind() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen()
        return sock
    return run_in(f"/run/netns/{ns}", bind)


def test_cli_reads_the_containers_sockets_as_the_dashboard_does(netns):
    """`bridgescope doctor` tells a published port nobody serves, as the dashboard's doctor does."""
    site = build(netns, DOCKER_29)
    deaf = run_cli("--netns", site.host)
    assert deaf.returncode == 0 and deaf.stdout.startswith("WARNING [nothing-listens] nothing listens on tcp/80")
    with listening_in(site.ctr, 80):
        assert run_cli("--netns", site.host).stdout == "No problems found.\n"


def test_cli_exit_status_text_and_json(netns):
    import json
    site = build(netns, DOCKER_29)
    with listening_in(site.ctr, 80):
        healthy = run_cli("--netns", site.host)
        assert healthy.returncode == 0 and healthy.stdout == "No problems found.\n"
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=site.host)
        site.ip(site.ctr, "link", "set", "lo", "down")
        broken = run_cli("--netns", site.host)
        assert broken.returncode == 2
        assert broken.stdout.startswith("ERROR [ip-forward-off]")
        assert "WARNING [link-down] lo in" in broken.stdout and broken.stdout.endswith("1 error, 1 warning\n")
        as_json = json.loads(run_cli("--json", "--netns", site.host).stdout)
        assert [(f["id"], f["severity"]) for f in as_json["findings"]] == [
            ("ip-forward-off", "error"), ("link-down", "warning")]
        assert set(as_json["findings"][0]) == {"id", "severity", "objects", "title", "explanation", "fix"}


def test_cli_missing_namespace_is_one_line_and_creates_nothing(run_prefix):
    missing = f"{run_prefix}-no-such-ns"
    res = run_cli("--netns", missing)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "does not exist" in res.stderr
    assert not os.path.exists(f"/run/netns/{missing}")
