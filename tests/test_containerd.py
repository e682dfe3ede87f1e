"""Pods named `namespace/pod` from a real containerd (tests/engines.py: confined to a throwaway
namespace, its own root, state and socket), its pod sandboxes made the way CRI labels them.

The node: containerd in the host namespace, bridge cni0 there, and a veth into each "pod"
namespace, as the bridge CNI plugin wires a pod; sandbox `sb` (kind=sandbox, shop/web) sleeps in
the first; `app` carries the pod labels without CRI's sandbox kind, in the second: no pod.
"""
from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys

import pytest
from conftest import RUN_PREFIX, sh
from engines import (
    CONTAINERD,
    CTR,
    RUNC,
    SANDBOX_LABELS,
    confined,
    make_netns,
    needs,
    start_containerd,
    wait_for,
)

from bridgescope.collector.kernel import containerd, containers
from bridgescope.collector.kernel.namespaces import ns_key
from bridgescope.collector.kernel.snapshot import collect
from bridgescope.collector.live.watcher import Watcher
from bridgescope.collector.render.graph import to_elements
from bridgescope.plumbing import adopt

CLI = [sys.executable, "-m", "bridgescope.webui.cli"]
POD = {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web"}
pytestmark = [pytest.mark.kernel, pytest.mark.engines, pytest.mark.slow, needs(CONTAINERD, CTR, RUNC)]


@pytest.fixture(scope="module")
def node(tmp_path_factory, engines_confined):
    tag = secrets.token_hex(2)
    pods = [f"{RUN_PREFIX}{tag}-{n}" for n in ("pod", "other", "mv1", "mv2", "shared")]
    host = start_containerd(tmp_path_factory.mktemp("containerd"), tag)
    gen = confined(host, containers=pods)
    next(gen)
    host.pod, host.other, host.moves, host.shared = pods[0], pods[1], pods[2:4], pods[4]
    sh("ip", "-n", host.ns, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", host.ns, "addr", "add", "10.244.0.1/24", "dev", "cni0")
    sh("ip", "-n", host.ns, "link", "set", "cni0", "up")
    for index, ns in enumerate(pods, start=2):
        make_netns(ns)
        sh("ip", "-n", host.ns, "link", "add", f"veth{index}", "master", "cni0", "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", host.ns, "link", "set", f"veth{index}", "up")
        sh("ip", "-n", ns, "addr", "add", f"10.244.0.{index}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    host.sandbox, host.app = f"sb{tag}", f"app{tag}"
    host.run_pod(host.sandbox, host.pod, {**SANDBOX_LABELS, **POD})
    host.run_pod(host.app, host.other, {**POD, "io.kubernetes.pod.name": "db"})
    yield host
    next(gen, None)


def key_of(ns: str) -> tuple[int, int]:
    key = ns_key(f"/run/netns/{ns}")
    assert key is not None
    return key


def snapshot_names(*args: str) -> dict[int, str]:
    res = subprocess.run([*CLI, "snapshot", "--json", "--no-firewall", *args], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return {n["inode"]: n["name"] for n in json.loads(res.stdout)["namespaces"]}


def test_snapshot_names_the_sandboxs_namespace_by_its_pod(node):
    names = snapshot_names("--netns", node.ns, "--engine-socket", node.socket)
    assert names[key_of(node.pod)[1]] == "shop/web"
    assert names[key_of(node.other)[1]] == node.other  # pod labels but no sandbox kind: no pod
    assert "shop/db" not in names.values()
    without = snapshot_names("--netns", node.ns)  # the name comes from containerd, nowhere else
    assert without[key_of(node.pod)[1]] == node.pod


def test_the_dashboards_picture_labels_the_pods_box(node):
    containers.choose_engine_sockets([node.socket])
    try:
        elements = to_elements(collect(node.ns, firewall=False))
    finally:
        containers.choose_engine_sockets(())
    labels = labels_of(elements)
    assert "shop/web" in labels and node.other in labels and "shop/db" not in labels


def test_the_live_picture_renames_a_namespace_when_its_sandbox_starts(node):
    """The namespace exists first (CNI made it), then CRI starts the sandbox in it, as on a node."""
    containers.choose_engine_sockets([node.socket])
    watcher = Watcher(node.ns, firewall=False, rescan_interval=1.0, heal_interval=3600).start()
    cid = f"{node.sandbox}live"
    try:
        assert node.moves[0] in labels_of(watcher.elements)
        node.run_pod(cid, node.moves[0], {**SANDBOX_LABELS, **POD, "io.kubernetes.pod.name": "live"})
        wait_for(lambda: "shop/live" in labels_of(watcher.elements), "the live picture to name the pod")
        assert node.moves[0] not in labels_of(watcher.elements)
    finally:
        watcher.stop()
        containers.choose_engine_sockets(())
        node.remove(cid)


def labels_of(elements: list[dict]) -> set[str]:
    return {e["data"]["label"] for e in elements if e["data"].get("kind") == "namespace"}


def test_a_namespace_several_sandboxes_share_is_no_pods(node):
    """As the node's own namespace is, where every host-network pod's sandbox runs."""
    ids = [f"{node.sandbox}hn{i}" for i in range(2)]
    try:
        for i, cid in enumerate(ids):
            node.run_pod(cid, node.shared, {**SANDBOX_LABELS, **POD, "io.kubernetes.pod.name": f"hostnet{i}"})
        names = containerd.pod_names([node.socket])
        assert key_of(node.shared) not in names and names[key_of(node.pod)] == "shop/web"
        assert snapshot_names("--netns", node.ns, "--engine-socket", node.socket)[key_of(node.shared)[1]] == node.shared
    finally:
        for cid in ids:
            node.remove(cid)


def test_docker_and_podmans_client_leaves_containerds_socket_alone(node):
    assert containers.speaks_http2(node.socket)
    assert containers.engine_container_names([node.socket]) == {}
    assert adopt.engine_ids([node.socket]) == ({}, frozenset())
    # known for HTTP/2 once, it is never sent an HTTP/1 request (containerd resets those)
    with pytest.raises(OSError, match="HTTP/2"):
        containers.engine_get(node.socket, "/containers/json")


def test_a_sandbox_is_located_once_and_again_when_it_moves(node, monkeypatch):
    """Sandbox mv (shop/api) runs in mv1, then, recreated under the same id, in mv2."""
    asked: list[str] = []
    real_call = containerd.Connection.call

    def counting(self, method, message, metadata=()):
        asked.append(method.rsplit(".", 1)[-1])
        return real_call(self, method, message, metadata)

    monkeypatch.setattr(containerd.Connection, "call", counting)
    monkeypatch.setattr(containerd, "_located", {})
    api = {**SANDBOX_LABELS, **POD, "io.kubernetes.pod.name": "api"}
    node.run_pod(f"{node.sandbox}mv", node.moves[0], api)
    try:
        first = containerd.pod_names([node.socket])
        assert first[key_of(node.moves[0])] == "shop/api" and first[key_of(node.pod)] == "shop/web"
        assert asked == ["Containers/List", "Tasks/List"]
        asked.clear()
        assert containerd.pod_names([node.socket]) == first
        assert asked == ["Containers/List"]  # every sandbox still where it was found
        node.remove(f"{node.sandbox}mv")
        node.run_pod(f"{node.sandbox}mv", node.moves[1], api)
        asked.clear()
        after = containerd.pod_names([node.socket])
        assert asked == ["Containers/List", "Tasks/List"]
        assert after[key_of(node.moves[1])] == "shop/api" and key_of(node.moves[0]) not in after
    finally:
        node.remove(f"{node.sandbox}mv")


def test_a_stopped_containerd_gives_no_names_and_no_error(node, tmp_path):
    """Its socket file outlives it when it dies unclean: connecting is refused. (How long that
    takes is test_containerd_wire's.)"""
    dead = tmp_path / "containerd.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))
    assert containerd.pod_names([str(dead)]) == {}
    names = snapshot_names("--netns", node.ns, "--engine-socket", str(dead))
    assert names[key_of(node.pod)[1]] == node.pod


def test_a_forward_to_a_pod_by_its_name(node):
    # `shop/web` is a pod's name here, not a path: the plan finds its namespace and address
    res = subprocess.run([*CLI, "forward", "add", "shop/web", "18080:80", "--dry-run", "--netns", node.ns,
                          "--engine-socket", node.socket], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "10.244.0.2" in res.stdout
