"""Adopt on the engines that do not run here (Docker 27/28/29, both of 29's backends), their
layouts loaded with the real tools into a throwaway host (tests/reference_layouts.py): the
forward carries real packets past the engine's own drops, survives the engine reloading its
rules, or is refused with the reason and the daemon option. Plus the pure choice of target."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import sh
from engines import BUSYBOX, fetch, wait_for
from reference_layouts import DOCKER_27, DOCKER_28, DOCKER_29, DOCKER_29_NFT, Layout
from test_doctor_kernel import build

from bridgescope.plumbing import adopt, api
from bridgescope.plumbing.errors import ValidationError

URL = "http://192.0.2.10:9090/"
# Podman with netavark's nftables driver: `table inet netavark` with container 10.88.0.14 and its
# published port 8080 (docs/kernel-layouts.md, "Podman (netavark)").
NETAVARK_NFT = Layout("netavark-nftables", "podman0", "10.88.0.1/16", "10.88.0.14/16",
                      nft=(Path(__file__).parent / "data/firewall/netavark-nftables.nft").read_text())


def serve(site, tmp_path) -> subprocess.Popen:
    (tmp_path / "index.html").write_text("adopted\n")
    return subprocess.Popen(["ip", "netns", "exec", site.ctr, BUSYBOX, "httpd", "-f", "-p", "80",
                             "-h", str(tmp_path)], start_new_session=True)


@pytest.fixture
def web(request):
    servers: list[subprocess.Popen] = []
    yield servers.append
    for s in servers:
        s.kill()
        s.wait(timeout=10)


@pytest.mark.kernel
@pytest.mark.parametrize("layout", [DOCKER_27, DOCKER_28, DOCKER_29], ids=lambda l: l.name)
def test_forward_passes_dockers_drops_from_docker_user(netns, layout, tmp_path, web):
    site = build(netns, layout)
    web(serve(site, tmp_path))
    world = site.host.rsplit("-", 1)[0] + "-world"
    assert fetch(world, URL, timeout=1) is None
    done = api.add_forward(site.ctr, "9090:80", host=site.host)
    assert "accepted from DOCKER-USER" in done.summary
    wait_for(lambda: fetch(world, URL, timeout=2) == "adopted\n", "the adopted forward")
    # "the daemon restarted": its rules flushed and loaded again, our jump in DOCKER-USER gone
    sh("iptables-nft-restore", ns=site.host, input=layout.iptables)
    assert fetch(world, URL, timeout=1) is None
    assert "put back the jump from DOCKER-USER" in api.reconcile(host=site.host).summary
    wait_for(lambda: fetch(world, URL, timeout=2) == "adopted\n", "the forward after the reload")
    api.remove_forward(site.ctr, "9090:80", host=site.host)
    assert fetch(world, URL, timeout=1) is None
    assert "bridgescope:" not in sh("iptables-nft-save", ns=site.host).stdout


@pytest.mark.kernel
def test_docker_29_nftables_is_refused_with_the_daemon_option(netns):
    site = build(netns, DOCKER_29_NFT)
    before = sh("nft", "list", "ruleset", ns=site.host).stdout
    with pytest.raises(ValidationError, match="--bridge-accept-fwmark"):
        api.add_forward(site.container_ip, "9090:80", host=site.host)
    assert sh("nft", "list", "ruleset", ns=site.host).stdout == before
    assert api.load_state(site.host).adopted == ()


@pytest.mark.kernel
def test_netavark_nftables_passes_forward_and_keeps_its_table(netns, tmp_path, web):
    """netavark's own table only accepts (FORWARD's policy is accept, its drops are for invalid
    packets and between its isolated networks): our forward needs no jump into it and no
    daemon option. Shown with packets, and through netavark reloading its table."""
    site = build(netns, NETAVARK_NFT)
    web(serve(site, tmp_path))
    world = site.host.rsplit("-", 1)[0] + "-world"

    def netavark() -> str:
        return sh("nft", "list", "table", "inet", "netavark", ns=site.host).stdout
    before = netavark()
    assert fetch(world, URL, timeout=1) is None
    done = api.add_forward(site.ctr, "9090:80", host=site.host)
    assert "accepted from" not in done.summary  # no engine chain to jump from
    [adopted] = api.load_state(site.host).adopted
    assert adopted.user_chain == "" and adopted.ip == "10.88.0.14"
    wait_for(lambda: fetch(world, URL, timeout=2) == "adopted\n", "the adopted forward")
    assert fetch(world, "http://192.0.2.10:8080/", timeout=2) == "adopted\n"  # netavark's own
    assert netavark() == before
    # "netavark restarted": its table deleted and written again; ours is elsewhere
    sh("nft", "delete", "table", "inet", "netavark", ns=site.host)
    sh("nft", "-f", "-", ns=site.host, input=NETAVARK_NFT.nft)
    assert api.reconcile(host=site.host).commands == ()
    wait_for(lambda: fetch(world, URL, timeout=2) == "adopted\n", "the forward after the reload")
    api.remove_forward(site.ctr, "9090:80", host=site.host)
    assert fetch(world, URL, timeout=1) is None
    assert netavark() == before
    assert "bridgescope" not in sh("nft", "list", "ruleset", ns=site.host).stdout


# --- pure: which container ------------------------------------------------------------------

A = adopt.Candidate("web", "172.17.0.2", "docker0", "/run/docker/netns/abc", 11,
                    ("/run/docker/netns/abc",), "docker", "f" * 64)
B = adopt.Candidate("db", "172.17.0.2", "br-1", "/run/netns/db", 12, ("/run/netns/db",))


def test_targets_by_name_id_namespace_and_ip():
    assert adopt.resolve("web", [A, B], ()) == A
    assert adopt.resolve("f" * 12, [A, B], ()) == A
    assert adopt.resolve("db", [A, B], ()) == B
    assert adopt.resolve("/run/docker/netns/abc", [A, B], ()) == A
    assert adopt.resolve("172.17.0.2", [A], ()) == A


def test_an_ip_two_containers_hold_is_refused():
    with pytest.raises(ValidationError, match="more than one container"):
        adopt.resolve("172.17.0.2", [A, B], ())


def test_unknown_and_unbridged_targets_are_refused():
    with pytest.raises(ValidationError, match="no container named x"):
        adopt.resolve("x", [A], ())
    with pytest.raises(ValidationError, match="attached to no bridge"):
        adopt.resolve("lonely", [A], ("lonely",))


def test_a_container_is_followed_by_its_engine_id_first():
    moved = adopt.Candidate("web", "172.17.0.3", "docker0", "/run/docker/netns/new", 13,
                            ("/run/docker/netns/new",), "docker", "f" * 64)
    a = A.adopted("DOCKER-USER")
    assert adopt.follow(a, [B, moved]) == moved
    assert adopt.follow(a, [B]) is None
    assert adopt.follow(B.adopted(""), [B]) == B
