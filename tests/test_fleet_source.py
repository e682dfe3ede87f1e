"""The fleet dashboard's source and routes: a real agent process on a sandbox lab followed by a
FleetSource (no browser), and the command line and forward API's refusals."""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import time

import fleet_labs
import pytest
from conftest import RUN_PREFIX

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui.app import create_app
from bridgescope.webui.cli_serve import fleet_plan
from bridgescope.webui.fleet.client import sse_events
from bridgescope.webui.fleet.source import Agent, FleetSource


def until(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout} s: {what}")
        time.sleep(0.05)


def host(source: FleetSource, name: str) -> dict | None:
    return next((h for h in source.hosts() if h["name"] == name), None)


# ---- pure parts ------------------------------------------------------------------------------

def test_sse_parsing_keeps_ids_and_sees_keepalives():
    lines = [b": hello\n", b"\n", b"id: 4\n", b"event: graph\n", b'data: {"a":\n', b"data: 1}\n", b"\n",
             b": keepalive\n", b"\n", b"event: doctor\n", b"data: {}\n", b"\n"]
    out = list(sse_events(iter(lines)))
    assert out == [("", None, ""), ("graph", "4", '{"a":\n1}'), ("", None, ""), ("doctor", None, "{}")]


def args(**kw) -> argparse.Namespace:
    base = {"agent": [], "kubernetes_agents": None, "agent_token_file": None, "agent_ca": None, "netns": None}
    return argparse.Namespace(**{**base, **kw})


def test_fleet_options(tmp_path):
    token = tmp_path / "t"
    token.write_text("sekrit\n")
    assert fleet_plan(args()) is None
    plan = fleet_plan(args(agent=["http://127.0.0.1:9477/", "https://node-2:9477", "http://127.0.0.1:9477"],
                           agent_token_file=str(token)), {})
    assert plan.agents == ("http://127.0.0.1:9477", "https://node-2:9477") and plan.token == "sekrit"
    plan = fleet_plan(args(kubernetes_agents="kube-system/bridgescope-agents"), {"BRIDGESCOPE_AGENT_TOKEN": "x"})
    assert plan.kubernetes == ("kube-system", "bridgescope-agents") and plan.agents == ()
    named = fleet_plan(args(kubernetes_agents="agents", agent_server_name="agents.ns.svc"), {"BRIDGESCOPE_AGENT_TOKEN": "x"})
    assert named.server_name == "agents.ns.svc"
    for bad, why in [({"agent": ["ftp://x"]}, r"http\(s\)://"), ({"agent": ["http://10.0.0.5:9477"]}, "in the clear"),
                     ({"agent": ["http://127.0.0.1:9477/v1"]}, "only scheme"),
                     ({"agent": ["http://127.0.0.1:9477"], "netns": "x"}, "contradict"),
                     ({"agent_ca": "/etc/hostname"}, "need --agent"),
                     ({"agent": ["https://n:1"], "agent_ca": str(tmp_path / "none")}, "CA file"),
                     ({"agent_server_name": "agents.example"}, "need --agent"),
                     ({"agent": ["https://n:1"], "agent_server_name": "a b/../c"}, "expected a DNS name")]:
        with pytest.raises(BridgescopeError, match=why):
            fleet_plan(args(**{"agent_token_file": str(token), **bad}), {})
    with pytest.raises(BridgescopeError, match="need a token"):
        fleet_plan(args(agent=["http://127.0.0.1:9477"]), {})


def test_cli_refuses_in_one_line_and_starts_nothing(tmp_path):
    env = {**os.environ, "BRIDGESCOPE_AGENT_TOKEN": ""}
    out = subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "serve", "--agent", "http://10.1.2.3:9477"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "in the clear" in out.stderr


@pytest.fixture
def fleet_app(tmp_path):
    """A dashboard in fleet mode whose one agent never answers (a port nothing listens on)."""
    source = FleetSource("tok")
    source.set_agents([Agent("http://127.0.0.1:9", "gone-host")])
    app = create_app({"NO_AUTH": True, "SOURCE": source, "AUDIT_LOG": str(tmp_path / "audit.jsonl"),
                      "TESTING": True})
    yield app, source, tmp_path / "audit.jsonl"
    source.stop()


def test_forward_api_in_fleet_mode_refuses_clearly(fleet_app):
    app, source, audit = fleet_app
    client = app.test_client()
    base = "http://127.0.0.1:8470"
    csrf = client.get("/api/session", base_url=base).get_json()["csrf_token"]

    def call(method, url, body):
        return client.open(url, method=method, base_url=base, headers={"X-CSRF-Token": csrf}, json=body)
    r = call("POST", "/api/forwards", {"host": "nope", "container": "c1", "spec": "8080:80"})
    assert r.status_code == 400 and "no such host" in r.get_json()["error"]
    r = call("POST", "/api/forwards", {"container": "c1", "spec": "8080:80"})
    assert r.status_code == 400 and r.get_json()["field"] == "host"
    r = call("POST", "/api/forwards", {"host": "gone-host", "container": "c1", "spec": "8080:80", "x": 1})
    assert r.status_code == 400 and "unknown field" in r.get_json()["error"]
    r = call("DELETE", "/api/forwards", {"host": "gone-host", "container": "c1", "spec": "8080:80"})
    assert r.status_code == 502 and "did not answer" in r.get_json()["error"]
    assert "\n" not in r.get_json()["error"]
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert entries[-1]["request"]["host"] == "gone-host" and entries[-1]["ok"] is False
    assert client.get("/api/fleet/hosts", base_url=base).get_json()[0]["name"] == "gone-host"
    assert call("POST", "/api/fleet/open", {"host": "nope"}).status_code == 400


# ---- a real agent on a real lab ----------------------------------------------------------------

@pytest.fixture(scope="module")
def one_lab(tmp_path_factory):
    from bridgescope.plumbing.lab import sandbox

    state = tmp_path_factory.mktemp("fleet-state")
    old = os.environ.get("BRIDGESCOPE_STATE_DIR")
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(state)
    prefix = f"{RUN_PREFIX}fs"
    try:
        info = sandbox.lab_up(prefix)
        agent = fleet_labs.make_agent("node-a", info.host, tmp_path_factory.mktemp("fleet-agent"), state)
        yield info, agent
    finally:
        sandbox.lab_down(prefix)
        if old is None:
            os.environ.pop("BRIDGESCOPE_STATE_DIR", None)
        else:
            os.environ["BRIDGESCOPE_STATE_DIR"] = old


@pytest.mark.kernel
def test_a_source_follows_an_agent_through_a_change_a_crash_and_a_restart(one_lab):
    info, agent = one_lab
    agent.start()
    source = FleetSource(fleet_labs.TOKEN)
    try:
        source.set_agents([Agent(agent.url)])
        q = source.subscribe()
        until(lambda: (host(source, "node-a") or {}).get("state") == "live", 60, "node-a live under its own name")
        until(lambda: any(e["data"].get("label") == "c1" for e in source.elements), 60, "c1 in the merged picture")
        assert all(e["data"]["id"].startswith("node-a/") or e["data"]["id"] == "fleet:node-a" for e in source.elements)
        # a kernel change on the host reaches the merged picture, as a delta with the next version
        subprocess.run(["ip", "-n", info.host, "link", "add", "fl0a", "type", "veth", "peer", "name", "fl0b"], check=True)
        until(lambda: any(e["data"].get("label") == "fl0a" for e in source.elements), 30, "fl0a merged")
        seen = []
        while True:
            try:
                seen.append(q.get_nowait())
            except queue.Empty:
                break
        deltas = [e for e in seen if e["type"] == "delta"]
        assert any(a["data"].get("label") == "fl0a" for d in deltas for a in d["added"])
        assert [d["version"] for d in deltas] == list(range(deltas[0]["version"], deltas[0]["version"] + len(deltas)))
        # dead agent: stale within 10 s, its picture kept
        count = len(source.elements)
        agent.kill()
        t0 = time.monotonic()
        until(lambda: host(source, "node-a")["state"] == "stale", 10, "node-a stale")
        assert time.monotonic() - t0 < 10
        assert len(source.elements) == count
        assert "stale since" in next(e for e in source.elements if e["data"]["id"] == "fleet:node-a")["data"]["label"]
        # a change while it was down is seen once it is back (a fresh graph replaces the picture)
        subprocess.run(["ip", "-n", info.host, "link", "del", "fl0a"], check=True)
        agent.start()
        until(lambda: host(source, "node-a")["state"] == "live", 60, "node-a live again")
        until(lambda: not any(e["data"].get("label") == "fl0a" for e in source.elements), 30, "fl0a gone")
    finally:
        source.stop()
        agent.stop()


def test_a_panel_in_fleet_mode_shows_what_the_agent_sent(fleet_app):
    app, source, _ = fleet_app
    client = app.test_client()
    base = "http://127.0.0.1:8470"
    r = client.get("/details/fleet:gone-host", base_url=base)
    assert r.status_code == 200 and "gone-host" in r.get_data(as_text=True)
    assert client.get("/details/gone-host/ns-1", base_url=base).status_code == 404


def test_a_read_only_fleet_dashboard_opens_hosts_but_changes_none(tmp_path):
    # Opening a folded host changes what is shown, not a host: a read-only dashboard of many
    # hosts would otherwise show nothing but summary boxes.
    source = FleetSource("tok")
    source.set_agents([Agent("http://127.0.0.1:9", "gone-host")])
    app = create_app({"NO_AUTH": True, "SOURCE": source, "AUDIT_LOG": str(tmp_path / "audit.jsonl"),
                      "TESTING": True, "READ_ONLY": True})
    try:
        client = app.test_client()
        base = "http://127.0.0.1:8470"
        csrf = client.get("/api/session", base_url=base).get_json()["csrf_token"]
        headers = {"X-CSRF-Token": csrf}
        r = client.post("/api/fleet/open", base_url=base, headers=headers, json={"host": "gone-host"})
        assert r.status_code == 200 and r.get_json() == {"host": "gone-host"}
        assert client.post("/api/fleet/open", base_url=base, json={"host": "gone-host"}).status_code == 403  # CSRF
        r = client.post("/api/forwards", base_url=base, headers=headers,
                        json={"host": "gone-host", "container": "c1", "spec": "8080:80"})
        assert r.status_code == 403 and "read-only" in r.get_data(as_text=True)
    finally:
        source.stop()
