"""The collector against real engines, each confined to a throwaway namespace (tests/engines.py).

Each module-scoped engine starts once; real traffic from a client namespace proves the fixture
is the real thing before the collector's view of it is checked.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from conftest import RUN_PREFIX
from engines import (
    CNI_BIN,
    DOCKERD,
    PAGE,
    PODMAN,
    Cni,
    confined,
    fetch,
    make_netns,
    new_namespaces,
    start_docker,
    start_podman,
    wait_for,
)

from bridgescope.collector.doctor import diagnose
from bridgescope.collector.kernel import containers
from bridgescope.collector.kernel.namespaces import discover, resolve_netns
from bridgescope.collector.kernel.snapshot import collect, scan
from bridgescope.collector.model import Snapshot

pytestmark = [pytest.mark.kernel, pytest.mark.engines, pytest.mark.slow]

CLI = [sys.executable, "-m", "bridgescope.webui.cli"]


def _tag() -> str:
    return secrets.token_hex(2)


@pytest.fixture(scope="module", params=["nft", "legacy"])
def docker(request, tmp_path_factory, engines_confined):
    if not os.path.exists(DOCKERD):
        pytest.skip("docker.io is not installed (make deps installs it)")
    host = start_docker(tmp_path_factory.mktemp(f"docker-{request.param}"), _tag(), request.param)
    host.backend = request.param
    host.web = f"{RUN_PREFIX}-web"
    yield from confined(host)


@pytest.fixture(scope="module")
def podman(tmp_path_factory, engines_confined):
    if not os.path.exists(PODMAN):
        pytest.skip("podman is not installed (make deps installs it)")
    host = start_podman(tmp_path_factory.mktemp("podman"), _tag())
    host.web = f"{RUN_PREFIX}-pweb"
    yield from confined(host)


@pytest.fixture(scope="module")
def cni(tmp_path_factory, engines_confined):
    if not os.path.exists(f"{CNI_BIN}/portmap"):
        pytest.skip("containernetworking-plugins is not installed")
    tag = _tag()
    ns, client = new_namespaces(tag)
    host = Cni("cni", ns, client, tmp_path_factory.mktemp("cni"))
    host.container = f"{RUN_PREFIX}{tag}-cnictr"
    make_netns(host.container)
    gen = confined(host, containers=[host.container])
    next(gen)
    host.result = host.add(host.container, [(8080, 80)])
    host.serve(host.container)
    yield host
    next(gen, None)


@pytest.fixture(scope="module")
def docker_web(docker):
    docker.run_web(docker.web)
    wait_for(lambda: fetch(docker.client, docker.url()) == PAGE, "the container's page")
    return docker


@pytest.fixture(scope="module")
def podman_web(podman):
    podman.run_web(podman.web)
    wait_for(lambda: fetch(podman.client, podman.url()) == PAGE, "the container's page")
    return podman


def ours(host: str) -> Snapshot:
    """The engine host and its containers only, for the doctor: the machine holds others'."""
    found = discover(resolve_netns(host))
    return scan([n for n in found if n.is_host or (n.name.startswith(RUN_PREFIX) and "client" not in n.name)])


def forward_8080(snap: Snapshot):
    return [pf for pf in snap.port_forwards
            if pf.host_port == 8080 and pf.via == "dnat" and pf.netns == snap.host]


def container_ns(snap: Snapshot, ip_prefix: str):
    """Namespaces plugged into the snapshot's host by a veth, holding an address in ip_prefix."""
    by_id = {i.id: i for i in snap.interfaces}
    hits = {i.netns for i in snap.interfaces
            if i.kind == "veth" and i.peer in by_id and by_id[i.peer].netns == snap.host
            and any(a.startswith(ip_prefix) for a in i.addresses)}
    return [snap.namespace(n) for n in hits]


def cli_json(*args: str, env: dict | None = None) -> dict:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def names_by_id(doc: dict) -> dict[str, str]:
    return {n["id"]: n["name"] for n in doc["namespaces"]}


# --- Docker -------------------------------------------------------------------------------------

def test_docker_publishes_to_the_client_for_real(docker_web):
    assert fetch(docker_web.client, docker_web.url()) == PAGE
    assert fetch(docker_web.client, docker_web.url(8081), timeout=1) is None  # nothing else answers


def test_docker_daemon_runs_in_its_namespace_by_the_pid_we_recorded(docker_web):
    pid = int((docker_web.workdir / "dockerd.pid").read_text())
    assert pid in docker_web.pids
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{docker_web.ns}").st_ino


def test_collector_sees_dockers_bridge_veths_container_and_forward(docker_web):
    containers.choose_engine_sockets([docker_web.socket])
    try:
        snap = collect(docker_web.ns)
    finally:
        containers.choose_engine_sockets(())
    host = snap.namespace(snap.host)
    assert host.name == docker_web.ns
    bridge = next(i for i in snap.interfaces if i.netns == host.id and i.name == "docker0")
    assert bridge.kind == "bridge" and "172.17.0.1/16" in bridge.addresses
    [ctr] = container_ns(snap, "172.17.0.")
    assert ctr.name == docker_web.web  # the engine's name, not a pid or a path
    inside = next(i for i in snap.interfaces if i.netns == ctr.id and i.kind == "veth")
    outside = next(i for i in snap.interfaces if i.id == inside.peer)
    assert outside.netns == host.id and outside.master == bridge.id
    [pf] = forward_8080(snap)
    assert (pf.owner, pf.to_port, pf.container, pf.netns) == ("docker", 80, ctr.id, host.id)
    assert pf.backend == docker_web.backend and pf.reachable and pf.forward_accept


def test_cli_names_dockers_container_by_option_and_by_docker_host(docker_web):
    by_option = cli_json("snapshot", "--json", "--no-firewall", "--netns", docker_web.ns,
                         "--engine-socket", docker_web.socket)
    by_env = cli_json("snapshot", "--json", "--no-firewall", "--netns", docker_web.ns,
                      env={"DOCKER_HOST": f"unix://{docker_web.socket}"})
    without = cli_json("snapshot", "--json", "--no-firewall", "--netns", docker_web.ns)
    assert docker_web.web in names_by_id(by_option).values()
    assert docker_web.web in names_by_id(by_env).values()
    assert docker_web.web not in names_by_id(without).values()


def test_doctor_finds_nothing_on_a_healthy_docker_host(docker_web):
    containers.choose_engine_sockets([docker_web.socket])
    try:
        findings = diagnose(ours(docker_web.ns))
    finally:
        containers.choose_engine_sockets(())
    assert findings == ()


def test_inspection_is_asked_once_per_container_until_it_restarts(docker_web, monkeypatch):
    asked: list[str] = []
    real_get = containers.engine_get

    def counting(sock: str, url: str) -> object:
        asked.append(url)
        return real_get(sock, url)

    monkeypatch.setattr(containers, "engine_get", counting)
    monkeypatch.setattr(containers, "_inspected", {})  # earlier tests filled it
    first = containers.engine_container_names([docker_web.socket])
    inspections = [u for u in asked if u != "/containers/json"]
    assert len(inspections) == 1
    asked.clear()
    assert containers.engine_container_names([docker_web.socket]) == first
    assert asked == ["/containers/json"]  # nothing inspected again
    docker_web.cli("restart", "-t", "0", docker_web.web)
    asked.clear()
    after = containers.engine_container_names([docker_web.socket])
    assert [u for u in asked if u != "/containers/json"] == inspections  # its namespace moved
    assert set(after.values()) == set(first.values())  # (the kernel may reuse the inode number)
    wait_for(lambda: fetch(docker_web.client, docker_web.url()) == PAGE, "the restarted container")


def test_docker_restarted_rebuilds_the_same_view(docker_web):
    docker_web.stop_daemon()  # flushes its chains; the container stops
    docker_web.start_daemon(docker_web.path)  # --restart always brings it back
    wait_for(lambda: fetch(docker_web.client, docker_web.url()) == PAGE, "the page after the restart")
    snap = collect(docker_web.ns)
    [pf] = forward_8080(snap)
    assert pf.owner == "docker" and pf.to_port == 80 and pf.forward_accept


# --- Podman -------------------------------------------------------------------------------------

def test_podman_publishes_to_the_client_for_real(podman_web):
    assert fetch(podman_web.client, podman_web.url()) == PAGE


def test_collector_sees_podmans_container_by_name_with_and_without_its_socket(podman_web):
    snap = collect(podman_web.ns)  # no socket asked: conmon names it
    [ctr] = container_ns(snap, "10.88.")
    assert ctr.name == podman_web.web
    assert podman_web.netns_of(podman_web.web) in ctr.paths
    [pf] = forward_8080(snap)
    assert (pf.owner, pf.to_port, pf.container) == ("podman", 80, ctr.id)
    names = containers.engine_container_names([podman_web.socket])
    assert podman_web.web in names.values()
    by_env = cli_json("snapshot", "--json", "--no-firewall", "--netns", podman_web.ns,
                      env={"CONTAINER_HOST": f"unix://{podman_web.socket}"})
    assert podman_web.web in names_by_id(by_env).values()


def test_doctor_on_podman_finds_only_hairpin_off_and_it_is_true(podman_web):
    # netavark 1.4 leaves hairpin off on its bridge ports, so a container cannot reach its own
    # published port through the host's address: the doctor's one finding, shown real below
    assert [f.id for f in diagnose(ours(podman_web.ns))] == ["hairpin-off"]
    own = podman_web.cli("exec", podman_web.web, "/bin/busybox", "timeout", "3", "/bin/busybox", "wget",
                         "-q", "-O", "-", "http://10.88.0.1:8080/", check=False)
    assert own.returncode != 0 and PAGE not in own.stdout


# --- CNI ----------------------------------------------------------------------------------------

def test_cni_portmap_publishes_to_the_client_for_real(cni):
    wait_for(lambda: fetch(cni.client, cni.url()) == PAGE, "the CNI container's page")


def test_collector_sees_the_cni_bridge_container_and_forward(cni):
    snap = collect(cni.ns)
    [ctr] = container_ns(snap, "10.88.77.")
    assert ctr.name == cni.container
    bridge = next(i for i in snap.interfaces if i.name == "cni-bst0")
    assert bridge.kind == "bridge" and bridge.netns == snap.host
    [pf] = forward_8080(snap)
    assert (pf.owner, pf.to_port, pf.container) == ("cni", 80, ctr.id)


def test_doctor_finds_nothing_on_a_healthy_cni_host(cni):
    assert diagnose(ours(cni.ns)) == ()
