"""Adopt on real engines confined to throwaway namespaces (tests/engines.py): a port forward
added by bridgescope to Docker's, Podman's and a CNI container carries real traffic from a
client namespace, leaves the engine's chains as they were (bar Docker's one DOCKER-USER
jump), follows the container through restarts and is refused again once removed."""
from __future__ import annotations

import difflib
import os
import re
import secrets
import subprocess
import sys

import pytest
from conftest import RUN_PREFIX, sh
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
from hostpicture import save_lines

from bridgescope.collector.kernel import containers, snapshot
from bridgescope.plumbing import adopt, api
from bridgescope.plumbing.errors import ValidationError

pytestmark = [pytest.mark.kernel, pytest.mark.engines, pytest.mark.slow]


_BUILTIN = tuple(f":{c} " for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))


def engine_chains(ns: str, backend: str) -> list[str]:
    """The engine's rules and chains as iptables-save prints them, in order, ours and counters
    left out (the tables alone are not compared: ours may bring the raw table into being)."""
    tool = "iptables-legacy-save" if backend == "legacy" else "iptables-nft-save"
    text = sh(tool, ns=ns).stdout
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
            if line.startswith(("-A", ":")) and not line.startswith(_BUILTIN)
            and "bridgescope:" not in line
            and "BRIDGESCOPE" not in line]


def reaches(host, port: int) -> bool:
    return fetch(host.client, host.url(port), timeout=2) == PAGE


@pytest.fixture(scope="module", params=["nft", "legacy"])
def docker(request, tmp_path_factory, engines_confined):
    if not os.path.exists(DOCKERD):
        pytest.skip("docker.io is not installed (make deps installs it)")
    host = start_docker(tmp_path_factory.mktemp(f"adopt-{request.param}"), secrets.token_hex(2),
                        request.param)
    host.backend = request.param
    host.web = f"{RUN_PREFIX}-aweb"
    containers.choose_engine_sockets([host.socket])
    try:
        host.run_web(host.web)
        wait_for(lambda: reaches(host, 8080), "the container's page")
        yield from confined(host)
    finally:
        containers.choose_engine_sockets(())


def test_docker_container_gets_a_forward_without_recreating_it(docker):
    before = engine_chains(docker.ns, docker.backend)
    assert not reaches(docker, 9090)
    done = api.add_forward(docker.web, "9090:80", host=docker.ns)
    assert "DOCKER-USER" in done.summary and "docker" in done.summary
    wait_for(lambda: reaches(docker, 9090), "the adopted forward")
    assert reaches(docker, 8080)  # Docker's own published port still works
    after = engine_chains(docker.ns, docker.backend)
    assert after == before, "\n".join(difflib.unified_diff(before, after, lineterm=""))
    tool = "iptables-legacy-save" if docker.backend == "legacy" else "iptables-nft-save"
    jumps = [line for line in sh(tool, ns=docker.ns).stdout.splitlines()
             if line.startswith("-A DOCKER-USER") and "bridgescope:" in line]
    assert len(jumps) == 1 and "-j BRIDGESCOPE-FORWARD" in jumps[0]
    [adopted] = api.load_state(docker.ns).adopted
    assert (adopted.engine, adopted.name, adopted.user_chain) == ("docker", docker.web, "DOCKER-USER")


def test_adopting_by_name_reads_that_container_alone(docker, monkeypatch):
    """A forward's cost does not grow with the machine: adding one to a container an engine
    names, and following it, read neither every namespace nor every container of the engine,
    and see it as the whole machine's view does (following that view changes nothing)."""
    other = f"{RUN_PREFIX}-aone"
    docker.run_web(other, "8082:80")
    with monkeypatch.context() as patched:
        patched.setattr(snapshot, "collect", lambda *_, **__: pytest.fail("read the whole machine"))
        patched.setattr(adopt, "engine_ids", lambda *_: pytest.fail("asked about every container"))
        api.add_forward(other, "9093:80", host=docker.ns)
        api.add_forward(other, "9094:80", host=docker.ns)  # known now: asked by its engine id
        assert api.reconcile(host=docker.ns).commands == ()
    wait_for(lambda: reaches(docker, 9093) and reaches(docker, 9094), "the forwards by name")
    whole = snapshot.collect(docker.ns, firewall=False)
    followed = api.reconcile(host=docker.ns, snapshot=whole)
    assert followed.commands == (), followed.summary
    api.remove_forward(other, "9093:80", host=docker.ns)
    api.remove_forward(other, "9094:80", host=docker.ns)
    docker.cli("rm", "-f", other)
    assert other not in [a.name for a in api.load_state(docker.ns).adopted]


def test_the_forward_follows_the_restarted_container(docker):
    old = api.load_state(docker.ns).adopted[0]
    docker.cli("restart", "-t", "0", docker.web)
    wait_for(lambda: reaches(docker, 8080), "the restarted container")
    api.reconcile(host=docker.ns)
    [now] = api.load_state(docker.ns).adopted
    assert now.engine_id == old.engine_id
    wait_for(lambda: reaches(docker, 9090), "the forward after the container's restart")


def test_the_forward_survives_the_daemon_restart(docker):
    docker.stop_daemon()
    docker.start_daemon(docker.path)
    wait_for(lambda: reaches(docker, 8080), "the page after dockerd restarted")
    api.reconcile(host=docker.ns)
    wait_for(lambda: reaches(docker, 9090), "the forward after dockerd restarted")


def test_forward_rm_refuses_again_and_leaves_dockers_chains_alone(docker):
    before = engine_chains(docker.ns, docker.backend)
    api.remove_forward(docker.web, "9090:80", host=docker.ns)
    assert not reaches(docker, 9090)
    assert reaches(docker, 8080)
    tool = "iptables-legacy-save" if docker.backend == "legacy" else "iptables-nft-save"
    assert "bridgescope:" not in sh(tool, ns=docker.ns).stdout  # nothing of ours left
    assert engine_chains(docker.ns, docker.backend) == before
    assert api.load_state(docker.ns).adopted == ()


def test_a_removed_container_loses_its_forward_on_reconcile(docker):
    other = f"{RUN_PREFIX}-agone"
    docker.run_web(other, "8081:80")
    api.add_forward(other, "9091:80", host=docker.ns)
    wait_for(lambda: reaches(docker, 9091), "the second adopted forward")
    docker.cli("rm", "-f", other)
    followed = api.reconcile(host=docker.ns)
    assert f"removed the forwards of {other}" in followed.summary
    assert api.load_state(docker.ns).adopted == ()
    assert not reaches(docker, 9091)


def test_the_cli_names_a_container_through_the_engine_socket_it_is_given(docker):
    argv = [sys.executable, "-m", "bridgescope.webui.cli", "forward", "add", "--netns", docker.ns,
            docker.web, "9095:80", "--dry-run"]
    alone = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert alone.returncode != 0 and "no container named" in alone.stderr  # not a default socket
    given = subprocess.run([*argv, "--engine-socket", docker.socket], capture_output=True,
                           text=True, timeout=120)
    assert given.returncode == 0, given.stderr
    assert "--dport 9095" in given.stdout and "dry run" in given.stderr


def test_bad_targets_change_nothing(docker):
    before = save_lines(sh("iptables-nft-save", ns=docker.ns).stdout)
    with pytest.raises(ValidationError, match="no container named nosuch"):
        api.add_forward("nosuch", "9092:80", host=docker.ns)
    with pytest.raises(ValidationError, match="attached to no bridge"):
        api.add_forward(docker.client, "9092:80", host=docker.ns)  # a namespace, no bridge
    with pytest.raises(ValidationError, match="already"):
        api.add_forward(docker.web, "8080:80", host=docker.ns)  # Docker's own port
    assert save_lines(sh("iptables-nft-save", ns=docker.ns).stdout) == before
    assert api.load_state(docker.ns).adopted == ()


# --- Podman -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman(tmp_path_factory, engines_confined):
    if not os.path.exists(PODMAN):
        pytest.skip("podman is not installed (make deps installs it)")
    host = start_podman(tmp_path_factory.mktemp("adopt-podman"), secrets.token_hex(2))
    host.web = f"{RUN_PREFIX}-apweb"
    host.run_web(host.web)
    wait_for(lambda: reaches(host, 8080), "the container's page")
    yield from confined(host)


def test_podman_container_adopted_followed_and_released(podman):
    before = engine_chains(podman.ns, "nft")
    api.add_forward(podman.web, "9090:80", host=podman.ns)
    wait_for(lambda: reaches(podman, 9090), "the adopted forward")
    assert reaches(podman, 8080)
    assert engine_chains(podman.ns, "nft") == before
    old = api.load_state(podman.ns).adopted[0]
    podman.cli("restart", "-t", "0", podman.web)
    wait_for(lambda: reaches(podman, 8080), "the restarted container")
    followed = api.reconcile(host=podman.ns)
    [now] = api.load_state(podman.ns).adopted
    assert now.netns != old.netns  # a new namespace: followed by its name
    if now.ip != old.ip:
        assert f"re-pointed the forwards of {podman.web}" in followed.summary
    before = engine_chains(podman.ns, "nft")  # netavark rewrote its DNAT for the new address
    wait_for(lambda: reaches(podman, 9090), "the forward after the restart")
    api.remove_forward(podman.web, "9090:80", host=podman.ns)
    assert not reaches(podman, 9090)
    assert engine_chains(podman.ns, "nft") == before


# --- CNI ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cni(tmp_path_factory, engines_confined):
    if not os.path.exists(f"{CNI_BIN}/portmap"):
        pytest.skip("containernetworking-plugins is not installed")
    tag = secrets.token_hex(2)
    ns, client = new_namespaces(tag)
    host = Cni("cni", ns, client, tmp_path_factory.mktemp("adopt-cni"))
    host.container = f"{RUN_PREFIX}{tag}-acni"
    make_netns(host.container)
    gen = confined(host, containers=[host.container])
    next(gen)
    host.result = host.add(host.container, [(8080, 80)])
    host.serve(host.container)
    wait_for(lambda: reaches(host, 8080), "the CNI container's page")
    yield host
    next(gen, None)


def test_cni_container_adopted_by_ip_and_released(cni):
    ip = cni.result["ips"][0]["address"].split("/")[0]
    before = engine_chains(cni.ns, "nft")
    done = api.add_forward(ip, "9090:80", host=cni.ns)
    assert cni.container in done.summary
    wait_for(lambda: reaches(cni, 9090), "the adopted forward")
    assert reaches(cni, 8080)
    assert engine_chains(cni.ns, "nft") == before
    api.remove_forward(cni.container, "9090:80", host=cni.ns)
    assert not reaches(cni, 9090)
    assert engine_chains(cni.ns, "nft") == before
