"""Pods whose runtime names their containers in the kubelet's format
(`k8s_CONTAINER_POD_NAMESPACE_UID_ATTEMPT`): CRI-O, whose conmons carry that name, and
cri-dockerd, through Docker. No CRI-O runs here: a real Podman container given such a name
stands in, its real conmon carrying it as CRI-O's would (tests/engines.py)."""
from __future__ import annotations

import os
import secrets

import pytest
from engines import PODMAN, confined, needs, start_podman

from bridgescope.collector.kernel.containers import container_name, pod_or_container
from bridgescope.collector.kernel.namespaces import discover, resolve_netns


@pytest.mark.parametrize(("name", "shown"), [
    ("k8s_POD_web_shop_8c3e5f9a-1d2b-4c6e-9f0a-7b1c2d3e4f5a_0", "shop/web"),  # a sandbox (infra)
    ("k8s_nginx_web-7d9f8b-x2kq4_kube-system_8c3e5f9a_12", "kube-system/web-7d9f8b-x2kq4"),
    ("web", "web"),
    ("k8s_web_shop", "k8s_web_shop"),                     # too few parts: not the format
    ("k8s_POD_web_shop_uid_first", "k8s_POD_web_shop_uid_first"),  # the attempt is a number
    ("my_k8s_POD_web_shop_uid_0", "my_k8s_POD_web_shop_uid_0"),
])
def test_the_kubelets_format_names_the_pod(name, shown):
    assert pod_or_container(name) == shown


def test_dockers_listing_of_a_cri_dockerd_container_names_the_pod():
    assert container_name({"Names": ["/k8s_POD_web_shop_uid_0"]}) == "shop/web"
    assert container_name({"Names": ["/web"]}) == "web"


@pytest.fixture(scope="module")
def podman(tmp_path_factory, engines_confined):
    host = start_podman(tmp_path_factory.mktemp("podman-kubelet"), secrets.token_hex(2))
    host.web = "k8s_app_web_shop_0f1e2d3c_0"
    yield from confined(host)


@pytest.mark.kernel
@pytest.mark.engines
@pytest.mark.slow
@needs(PODMAN)
def test_a_pods_conmon_names_its_namespace(podman):
    podman.run_web(podman.web)
    sandbox = podman.netns_of(podman.web)
    found = discover(resolve_netns(podman.ns), engine_sockets=[])  # no API socket: conmon's name
    [pod] = [ns for ns in found if sandbox in ns.paths]
    assert pod.name == "shop/web"
    assert os.path.basename(sandbox) != "shop/web"
