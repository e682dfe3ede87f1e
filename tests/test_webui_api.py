"""The JSON API: snapshot, graph, session, audit, and the mutating endpoints."""
from __future__ import annotations

import pytest
from webui_sources import StaticSource, sample_snapshot

from bridgescope.webui import bodies
from bridgescope.webui.app import create_app

BASE = "http://127.0.0.1:8470"


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))

    def make(**config):
        app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True,
                          "AUDIT_LOG": str(tmp_path / "audit.jsonl"), **config})
        client = app.test_client()
        csrf = client.get("/api/session", base_url=BASE).get_json()["csrf_token"]

        def call(method, url, **kw):
            return client.open(url, method=method, base_url=BASE, headers={"X-CSRF-Token": csrf}, **kw)
        return client, call
    return make


def test_topology_is_the_snapshot_json(api):
    client, _ = api()
    data = client.get("/api/topology", base_url=BASE).get_json()
    assert {"namespaces", "interfaces", "routes", "rules", "port_forwards", "masquerades", "warnings"} <= set(data)
    pf = data["port_forwards"][0]
    assert (pf["proto"], pf["host_port"], pf["to_ip"], pf["to_port"], pf["owner"]) == ("tcp", 8080, "172.17.0.2", 80, "docker")
    download = client.get("/api/topology?download=1", base_url=BASE)
    assert "attachment" in download.headers["Content-Disposition"]


def test_graph_elements_with_positions_and_loopback_on_request(api):
    client, _ = api()
    resp = client.get("/api/graph", base_url=BASE)
    assert resp.headers["X-Topology-Version"] == "1"
    elements = resp.get_json()
    nodes = [e for e in elements if e["group"] == "nodes"]
    assert all("x" in n["position"] and "y" in n["position"] for n in nodes)
    assert not any(n["data"]["kind"] == "loopback" for n in nodes)
    with_lo = client.get("/api/graph?loopback=1", base_url=BASE).get_json()
    assert sum(e["data"]["kind"] == "loopback" for e in with_lo) == 2


def test_session_tells_scripts_the_csrf_token_and_mode(api):
    client, _ = api(READ_ONLY=True)
    body = client.get("/api/session", base_url=BASE).get_json()
    assert body["read_only"] is True and len(body["csrf_token"]) >= 24


@pytest.mark.parametrize("method,url,body,field", [
    ("POST", "/api/networks", {"subnet": "10.1.0.0/24"}, "name"),
    ("POST", "/api/networks", {"name": "n"}, "subnet"),
    ("POST", "/api/containers", {"name": "c"}, "network"),
    ("POST", "/api/forwards", {"container": "c"}, "spec"),
    ("DELETE", "/api/forwards", {"spec": "8080:80"}, "container"),
])
def test_missing_json_fields_are_named(api, method, url, body, field):
    _, call = api()
    resp = call(method, url, json=body)
    assert resp.status_code == 422 and resp.get_json()["field"] == field


def test_a_body_that_is_not_json_is_refused(api):
    _, call = api()
    resp = call("POST", "/api/networks", data="name=x", content_type="application/json")
    assert resp.status_code == 400 and "JSON object" in resp.get_json()["error"]


@pytest.mark.kernel
def test_json_mutations_against_a_throwaway_host(api, netns, tmp_path):
    host = netns("host")
    client, call = api(HOST=host)
    dry = call("POST", "/api/networks", json={"name": "bsapi0", "subnet": "10.236.0.0/24", "dry_run": True})
    assert dry.status_code == 200 and dry.get_json()["dry_run"] is True
    assert any("bsapi0" in c for c in dry.get_json()["commands"])
    bad = call("POST", "/api/networks", json={"name": "bsapi0", "subnet": "10.236.0.0/40"})
    assert bad.status_code == 422 and bad.get_json()["field"] == "subnet"
    made = call("POST", "/api/networks", json={"name": "bsapi0", "subnet": "10.236.0.0/24"})
    assert made.status_code == 200 and made.get_json()["dry_run"] is False
    assert call("DELETE", "/api/networks/nosuch").get_json()["field"] == "name"
    assert call("DELETE", "/api/networks/bsapi0").status_code == 200
    audit = client.get("/api/audit", base_url=BASE).get_json()
    assert [a["request"]["action"] for a in audit][:2] == ["remove_network", "remove_network"]
    assert audit[0]["ok"] is True and audit[1]["ok"] is False and audit[2]["ok"] is True
    assert set(audit[0]) == {"time", "client", "request", "commands", "result", "ok"}


# ---- strict JSON: wrong types are a 400 naming the field, never a 500, never a change ---------

def test_audit_count_must_be_a_number(api):
    client, _ = api()
    for bad in ("abc", "-1", "1.5", "²", "9" * 40):
        resp = client.get(f"/api/audit?n={bad}", base_url=BASE)
        assert resp.status_code == 400 and resp.get_json()["field"] == "n", bad
    assert client.get("/api/audit?n=3", base_url=BASE).status_code == 200


@pytest.fixture
def host_api(api, netns):
    """The API acting on a throwaway namespace (a field that slipped through changes only it)."""
    host = netns("host")
    client, call = api(HOST=host)
    return host, client, call


def _kernel(host: str) -> tuple[str, str]:
    from conftest import sh
    return (sh("ip", "-n", host, "-br", "link").stdout,
            sh("iptables-nft-save", ns=host).stdout.split("\n", 1)[-1])


@pytest.mark.kernel
@pytest.mark.parametrize("method,url,body,field", [
    ("POST", "/api/networks", {"name": 123, "subnet": "10.242.0.0/24"}, "name"),
    ("POST", "/api/networks", {"name": "bsj0", "subnet": ["10.242.0.0/24"]}, "subnet"),
    ("POST", "/api/networks", {"name": "bsj0", "subnet": "10.242.0.0/24", "gateway": 5}, "gateway"),
    ("POST", "/api/networks", {"name": "bsj0", "subnet": "10.242.0.0/24", "masquerade": "false"}, "masquerade"),
    ("POST", "/api/networks", {"name": "bsj0", "subnet": "10.242.0.0/24", "masquerade": 0}, "masquerade"),
    ("POST", "/api/networks", {"name": "bsj0", "subnet": "10.242.0.0/24", "dry_run": "no"}, "dry_run"),
    ("POST", "/api/networks", {"name": "bsj0", "subnet": "10.242.0.0/24", "masqerade": False}, "masqerade"),
    ("POST", "/api/containers", {"name": "c", "network": "n", "ports": "8080:80"}, "ports"),
    ("POST", "/api/containers", {"name": "c", "network": "n", "ports": [8080]}, "ports"),
    ("POST", "/api/containers", {"name": "c", "network": {"n": 1}}, "network"),
    ("POST", "/api/forwards", {"container": "c", "spec": 8080}, "spec"),
    ("DELETE", "/api/forwards", {"container": ["c"], "spec": "8080:80"}, "container"),
    ("DELETE", "/api/networks/bsj0", {"force": "true"}, "force"),
])
def test_json_fields_of_the_wrong_type_are_a_400(host_api, method, url, body, field):
    """"masquerade": "false" was bool("false"): a MASQUERADE nobody asked for; 123 was a 500."""
    host, _, call = host_api
    before = _kernel(host)
    resp = call(method, url, json=body)
    assert resp.status_code == 400 and resp.get_json()["field"] == field, resp.get_data(as_text=True)
    assert _kernel(host) == before


@pytest.mark.kernel
@pytest.mark.parametrize("body,field", [
    ({"name": "--help", "subnet": "10.243.0.0/24"}, "name"),
    ({"name": "дocker0", "subnet": "10.243.0.0/24"}, "name"),
    ({"name": "bsj1", "subnet": "240.0.0.0/24"}, "subnet"),
    ({"name": "bsj1", "subnet": "0.0.0.0/8"}, "subnet"),
])
def test_json_values_are_checked_as_the_forms_check_them(host_api, body, field):
    host, _, call = host_api
    before = _kernel(host)
    resp = call("POST", "/api/networks", json=body)
    assert resp.status_code == 422 and resp.get_json()["field"] == field
    assert _kernel(host) == before


@pytest.mark.kernel
def test_query_flags_are_strict_too(host_api):
    host, _, call = host_api
    resp = call("POST", "/api/networks?dry_run=maybe", json={"name": "bsj2", "subnet": "10.244.0.0/24"})
    assert resp.status_code == 400 and resp.get_json()["field"] == "dry_run"
    assert "bsj2" not in _kernel(host)[0]


@pytest.mark.kernel
def test_api_refusals_are_audited_but_not_dry_runs(host_api):
    _, client, call = host_api
    call("POST", "/api/networks", json={"name": "bsj3", "subnet": "10.245.0.0/24", "masquerade": "no",
                                        "dry_run": True})
    call("POST", "/api/networks", json={"name": "-bsj3", "subnet": "10.245.0.0/24", "dry_run": True})
    assert client.get("/api/audit", base_url=BASE).get_json() == []
    call("POST", "/api/networks", json={"name": "bsj3", "subnet": "10.245.0.0/24", "masquerade": "no"})
    call("POST", "/api/networks", json={"name": "-bsj3", "subnet": "10.245.0.0/24"})
    audit = client.get("/api/audit", base_url=BASE).get_json()
    assert [a["result"].split(":")[0] for a in audit] == ["refused", "refused"]
    assert "must not start with" in audit[0]["result"] and "masquerade" in audit[1]["result"]
    assert audit[1]["request"]["action"] == "create_network" and not audit[1]["ok"]


def test_a_json_body_over_the_limit_is_a_413(api):
    _, call = api(HOST="nonexistent")
    resp = call("POST", "/api/networks", json={"name": "n", "subnet": "x" * (bodies.MAX_BODY + 1)})
    assert resp.status_code == 413
