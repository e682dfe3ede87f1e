"""The Kubernetes manifests and the Prometheus rules: valid offline, and no more power than needed.

kubernetes-validate carries the API's JSON schemas, so this runs without a cluster or a
network; strict mode refuses fields the API does not know (a misspelt key would otherwise be
dropped silently by the API server).
"""
from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bridgescope.webui import cli
from bridgescope.webui.fleet import metrics

ROOT = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.37"
CAPABILITIES = {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
MANIFESTS = sorted((ROOT / "kubernetes").rglob("*.yaml"))


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


def walk(value, key: str):
    """Every value of `key` anywhere in a parsed document."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, key)


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def test_there_are_manifests():
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == ["DaemonSet", "Deployment", "Role", "RoleBinding", "Secret", "Service", "Service",
                     "ServiceAccount"]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"]["namespace"] == "bridgescope"


def test_the_validator_is_strict():
    doc = of_kind("DaemonSet")[0]
    bad = {**doc, "spec": {**doc["spec"], "tolerationz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_nothing_is_privileged_and_capabilities_are_the_few_needed():
    for doc in documents():
        assert True not in walk(doc, "privileged")
        assert True not in walk(doc, "allowPrivilegeEscalation")
        for c in containers(doc) if doc["kind"] in ("DaemonSet", "Deployment") else ():
            sc = c["securityContext"]
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert set(sc["capabilities"].get("add", [])) <= CAPABILITIES
            assert sc["readOnlyRootFilesystem"] is True
    dashboard = of_kind("Deployment")[0]
    assert not any(c["securityContext"]["capabilities"].get("add") for c in containers(dashboard))


def test_every_container_has_tcp_probes():
    for doc in of_kind("DaemonSet") + of_kind("Deployment"):
        for c in containers(doc):
            assert "tcpSocket" in c["livenessProbe"] and "tcpSocket" in c["readinessProbe"]


def test_the_agent_sees_the_node():
    ds = of_kind("DaemonSet")[0]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert {"operator": "Exists"} in spec["tolerations"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    for path in ("/run/netns", "/var/run/netns"):
        assert mounts[path]["mountPropagation"] == "HostToContainer"
    for path in ("/run/containerd", "/var/run/crio", "/var/run/docker.sock"):
        assert mounts[path]["readOnly"] is True


def test_the_agent_is_read_only_by_default_and_its_flags_exist():
    agent = of_kind("DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert agent["command"] == ["bridgescope", "agent"]
    assert "--allow-changes" not in agent["args"]
    args = cli.build_parser("agent").parse_args(["agent", *agent["args"]])
    assert args.tls_cert and args.tls_key and args.token_file and not args.allow_changes


def test_the_headless_service_selects_the_agents():
    ds = of_kind("DaemonSet")[0]
    svc = next(s for s in of_kind("Service") if s["metadata"]["name"] == "bridgescope-agents")
    assert svc["spec"]["clusterIP"] == "None"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for c in containers(ds) for p in c["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    dashboard = containers(of_kind("Deployment")[0])[0]
    assert f"--kubernetes-agents={svc['metadata']['name']}" in dashboard["args"]


def test_rbac_reads_endpointslices_and_nothing_else():
    assert not of_kind("ClusterRole") and not of_kind("ClusterRoleBinding")
    (role,) = of_kind("Role")
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    (binding,) = of_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (account,) = of_kind("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "bridgescope"}]
    dashboard = of_kind("Deployment")[0]["spec"]["template"]["spec"]
    assert dashboard["serviceAccountName"] == account["metadata"]["name"]
    agent = of_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    assert agent["automountServiceAccountToken"] is False


def test_no_secret_is_committed():
    (secret,) = of_kind("Secret")
    assert all("REPLACE" in value for value in secret["stringData"].values())
    assert not (ROOT / "kubernetes" / "secret.yaml").exists()  # only under templates/, never applied
    used = {item["key"] for doc in of_kind("DaemonSet") + of_kind("Deployment")
            for items in walk(doc, "items") for item in items}
    assert used <= set(secret["stringData"])


# ---- Prometheus ---------------------------------------------------------------------------

def test_alert_rules_are_well_formed_and_name_exported_metrics():
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yaml").read_text())
    assert set(rules) == {"groups"}
    exported = {f"{n}{s}" for n in metrics.NAMES for s in ("", "_bucket", "_sum", "_count")}
    alerts = {}
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert rule["alert"] and rule["expr"]
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            named = set(re.findall(r"\bbridgescope_\w+", rule["expr"]))
            assert named <= exported, named - exported
            alerts[rule["alert"]] = rule
    unreachable = alerts["BridgescopePublishedPortUnreachable"]
    assert 'bridgescope_forwards{reachable="false"}' in unreachable["expr"]


def test_the_scrape_example_presents_the_token_and_checks_the_ca():
    conf = yaml.safe_load((ROOT / "prometheus" / "scrape-config.yaml").read_text())
    (job,) = conf["scrape_configs"]
    assert job["scheme"] == "https" and job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["tls_config"]["ca_file"]
