"""`bridgescope agent` as a real process on a sandbox lab: its API, events, forwards, metrics, TLS.

One lab and one agent (changes allowed) serve the module; the read-only and TLS agents are
started by their tests. Each agent runs `--netns` the lab's host and listens on loopback.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import RUN_PREFIX, sh
from serve_process import free_port, stop

from bridgescope.plumbing.lab import sandbox as lab_mod
from bridgescope.webui.fleet import metrics

pytestmark = pytest.mark.kernel

READ_ONLY = {"error": "this agent is read-only (start it with --allow-changes)"}


@dataclass(frozen=True)
class Agent:
    base: str
    token: str
    proc: subprocess.Popen
    audit: Path
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.base + path, headers={**self.auth, **kw.pop("headers", {})},
                            timeout=30, **kw)

    def send(self, method: str, path: str, body, **kw) -> requests.Response:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        headers = {"Content-Type": "application/json", **self.auth, **kw.pop("headers", {})}
        return requests.request(method, self.base + path, data=data, headers=headers, timeout=60, **kw)


def start_agent(tmp: Path, host: str, *args: str, scheme: str = "http",
                verify: str | bool = True, token: str | None = None) -> Agent:
    """token: one several agents share (a fleet dashboard has one for all); default a fresh one."""
    tmp.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(16)
    (tmp / "token").write_text(token + "\n")
    port = free_port()
    log, audit = tmp / "agent.log", tmp / "audit.jsonl"
    argv = [sys.executable, "-m", "bridgescope.webui.cli", "agent", "--netns", host,
            "--listen", f"127.0.0.1:{port}", "--token-file", str(tmp / "token"),
            "--audit-log", str(audit), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    agent = Agent(f"{scheme}://127.0.0.1:{port}", token, proc, audit, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(agent.base + "/v1/info", headers=agent.auth, timeout=30, verify=verify).ok:
                return agent
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"the agent did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def lab() -> Iterator[lab_mod.LabInfo]:
    prefix = f"{RUN_PREFIX}{secrets.token_hex(2)}"
    try:
        yield lab_mod.lab_up(prefix)
    finally:
        lab_mod.lab_down(prefix)


@pytest.fixture(scope="module")
def agent(lab, tmp_path_factory) -> Iterator[Agent]:
    a = start_agent(tmp_path_factory.mktemp("agent"), lab.host, "--allow-changes")
    yield a
    stop(a.proc)


def rules(ns: str) -> list[str]:
    """The lab host's rules without counters: what a refused change must leave alone."""
    text = sh("iptables-nft-save", ns=ns).stdout + sh("iptables-legacy-save", ns=ns, check=False).stdout
    return sorted(line for line in text.splitlines() if line.startswith("-A"))


def http(ns: str, url: str) -> str:
    return sh("curl", "-s", "-m", "5", url, ns=ns, check=False).stdout.strip()


# ---- the event stream ---------------------------------------------------------------------

class Events:
    """An open /v1/events stream, parsed in a thread: (id, event, data) tuples on a queue."""

    def __init__(self, agent: Agent, last_id: int | None = None, verify: str | bool = True):
        headers = {**agent.auth, **({"Last-Event-ID": str(last_id)} if last_id is not None else {})}
        self.resp = requests.get(agent.base + "/v1/events", headers=headers, stream=True, timeout=30,
                                 verify=verify)
        self.resp.raise_for_status()
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                if line == "":
                    if "data" in fields:
                        self.q.put((fields.get("id"), fields.get("event"), json.loads(fields["data"])))
                    fields = {}
                elif line.startswith(":"):
                    self.q.put((None, "comment", line))
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        except Exception:  # closed by the test, or the agent went away: the stream ended
            pass
        self.q.put(None)

    def next(self, kinds: tuple[str, ...] = ("graph", "delta"), timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                raise AssertionError("the stream ended")
            if item[1] in kinds:
                return item
        raise AssertionError(f"no {kinds} event within {timeout} s")

    def close(self) -> None:
        self.resp.close()


def mentions(event: dict, text: str) -> bool:
    return text in json.dumps(event.get("added", [])) + json.dumps(event.get("changed", []))


# ---- tokens -------------------------------------------------------------------------------

ROUTES = [("GET", "/v1/info"), ("GET", "/v1/snapshot"), ("GET", "/v1/events"), ("GET", "/metrics"),
          ("POST", "/v1/forwards"), ("DELETE", "/v1/forwards"), ("GET", "/no/such/route")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_needs_the_token(agent, lab, method, path):
    before = rules(lab.host)
    body = json.dumps({"target": "c2", "mapping": "8099:80"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {agent.token}"},
                    {"Authorization": f"Bearer {agent.token}x"}):
        resp = requests.request(method, agent.base + path, data=body, timeout=30, stream=True,
                                headers={**headers, "Content-Type": "application/json"})
        assert resp.status_code == 401, (headers, resp.status_code)
        assert resp.headers["Content-Type"] == "application/json"
        assert "token" in resp.json()["error"]
    assert rules(lab.host) == before


def test_info(agent, lab):
    info = agent.get("/v1/info").json()
    assert info["name"] == lab.host and info["read_only"] is False
    assert isinstance(info["version"], int) and info["bridgescope"]


# ---- the snapshot -------------------------------------------------------------------------

COUNTERS = ("packets", "bytes")


def lab_part(doc: dict, prefix: str) -> dict:
    """The objects of the lab's namespaces (other tests' namespaces come and go meanwhile),
    without the rule counters and the time of the read."""
    ids = {ns["id"] for ns in doc["namespaces"] if (ns["name"] or "").startswith(prefix)}

    def strip(item: dict) -> dict:
        return {k: v for k, v in item.items() if k not in COUNTERS}
    out = {"host": doc["host"]}
    for key, value in doc.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            own = [strip(x) for x in value if x.get("netns", x.get("id")) in ids]
            out[key] = sorted(own, key=lambda x: json.dumps(x, sort_keys=True))
    return out


def test_snapshot_is_the_cli_snapshot_plus_the_doctor(agent, lab):
    # A fresh lab's veths reach operstate UP up to a second after they were set up (the kernel's
    # link watch batches carrier changes): the two reads are compared once the lab has settled.
    deadline = time.monotonic() + 20
    while True:
        cli = json.loads(sh(sys.executable, "-m", "bridgescope.webui.cli", "snapshot", "--json", "--netns",
                            lab.host, timeout=120).stdout)
        got = agent.get("/v1/snapshot").json()
        if lab_part(got["snapshot"], lab.prefix) == lab_part(cli, lab.prefix) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(got) == {"name", "version", "snapshot", "findings", "counts"}
    assert got["name"] == lab.host and isinstance(got["version"], int)
    assert set(got["snapshot"]) == set(cli)
    assert lab_part(got["snapshot"], lab.prefix) == lab_part(cli, lab.prefix)
    assert len(lab_part(cli, lab.prefix)["namespaces"]) == 5  # host, inet, client, c1, c2
    assert got["findings"] == [] and got["counts"] == {"error": 0, "warning": 0, "info": 0}


def test_snapshot_carries_the_doctors_findings(agent, lab):
    sh("ip", "link", "set", "docker0", "down", ns=lab.host)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = agent.get("/v1/snapshot").json()
            if got["counts"]["error"]:
                break
            time.sleep(0.3)
        finding = next(f for f in got["findings"] if f["severity"] == "error")
        assert set(finding) == {"id", "severity", "title", "objects", "fix"}
        assert "link set docker0 up" in finding["fix"]
    finally:
        sh("ip", "link", "set", "docker0", "up", ns=lab.host)


# ---- events -------------------------------------------------------------------------------

def test_events_send_the_graph_then_a_delta_for_a_change(agent, lab):
    events = Events(agent)
    try:
        ident, kind, graph = events.next()
        assert kind == "graph" and graph["type"] == "graph" and int(ident) == graph["version"]
        assert any(e["data"].get("label") == lab.host for e in graph["elements"])
        sh("ip", "link", "add", "agentdummy0", "type", "veth", "peer", "name", "agentpeer0", ns=lab.host)
        while True:
            ident, kind, delta = events.next()
            assert kind == "delta" and int(ident) == delta["version"] > graph["version"]
            if mentions(delta, "agentdummy0"):
                break
        _, _, doctor = events.next(("doctor",))
        assert set(doctor) >= {"type", "counts", "findings", "verdicts"}
    finally:
        events.close()
        sh("ip", "link", "del", "agentdummy0", ns=lab.host, check=False)


def test_events_are_never_silent_for_more_than_five_seconds(agent):
    """A keepalive comment whenever 5 s pass without an event (other namespaces on this machine
    may change meanwhile: then deltas fill the silence), so a dead agent shows within 10 s."""
    events = Events(agent)
    try:
        events.next(("graph",))
        last = began = time.monotonic()
        while time.monotonic() - began < 12:
            events.next(("graph", "delta", "doctor", "comment"), timeout=10)
            assert time.monotonic() - last < 7
            last = time.monotonic()
    finally:
        events.close()


def test_last_event_id_resumes_with_only_the_missed_deltas(agent, lab):
    events = Events(agent)
    _, _, graph = events.next(("graph",))
    seen = graph["version"]
    events.close()
    sh("ip", "link", "add", "agentdummy1", "type", "veth", "peer", "name", "agentpeer1", ns=lab.host)
    try:
        deadline = time.monotonic() + 30
        while agent.get("/v1/info").json()["version"] == seen and time.monotonic() < deadline:
            time.sleep(0.1)
        resumed = Events(agent, last_id=seen)
        try:
            ident, kind, first = resumed.next()
            assert kind == "delta", "a resumed stream starts with the missed deltas, not a graph"
            assert first["version"] == seen + 1
            versions, found = [first["version"]], mentions(first, "agentdummy1")
            while not found:
                _, kind, delta = resumed.next()
                assert kind == "delta"
                versions.append(delta["version"])
                found = mentions(delta, "agentdummy1")
            assert versions == list(range(seen + 1, seen + 1 + len(versions)))
        finally:
            resumed.close()
        # An id the agent cannot continue from (it was restarted, or it is far behind): a graph.
        again = Events(agent, last_id=10**12)
        try:
            assert again.next()[1] == "graph"
        finally:
            again.close()
    finally:
        sh("ip", "link", "del", "agentdummy1", ns=lab.host, check=False)


# ---- forwards -----------------------------------------------------------------------------

def test_a_forward_through_the_agent_carries_traffic_and_is_audited(agent, lab):
    assert http(lab.client, f"http://{lab.host_ip}:8091/") == ""
    body = {"target": "c2", "mapping": "8091:80", "actor": "alice@dashboard"}
    resp = agent.send("POST", "/v1/forwards", body)
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert got["forward"]["target"] == "c2" and got["forward"]["ports"][0]["host_port"] == 8091
    assert any("DNAT" in c for c in got["commands"])
    try:
        assert http(lab.client, f"http://{lab.host_ip}:8091/") == f"c2 saw {lab.client_ip}"
        line = json.loads(agent.audit.read_text().splitlines()[-1])
        assert line["client"] == "alice@dashboard via 127.0.0.1" and line["ok"]
        assert line["request"]["action"] == "add_forward" and line["request"]["path"] == "/v1/forwards"
    finally:
        resp = agent.send("DELETE", "/v1/forwards", body)
    assert resp.status_code == 200, resp.text
    assert http(lab.client, f"http://{lab.host_ip}:8091/") == ""
    assert json.loads(agent.audit.read_text().splitlines()[-1])["request"]["action"] == "remove_forward"


BAD_BODIES = [
    ("POST", "not json at all", 400),
    ("POST", [], 400),
    ("POST", {"target": "c2"}, 400),
    ("POST", {"mapping": "8092:80"}, 400),
    ("POST", {"target": "c2", "mapping": 8092}, 400),
    ("POST", {"target": "c2", "mapping": "8092:80", "force": True}, 400),
    ("POST", {"target": "c2", "mapping": "80x"}, 400),
    ("POST", {"target": "c2", "mapping": "8092:80/icmp"}, 400),
    ("POST", {"target": "-c2", "mapping": "8092:80"}, 400),
    ("POST", {"target": "c2", "mapping": "8092:80", "actor": 5}, 400),
    ("DELETE", {"target": "c2"}, 400),
    ("POST", {"target": "nosuchcontainer", "mapping": "8092:80"}, 404),
    ("DELETE", {"target": "nosuchcontainer", "mapping": "8092:80"}, 404),
    ("POST", {"target": "c2", "mapping": "8080:80"}, 409),  # c1 publishes 8080 already
    ("DELETE", {"target": "c2", "mapping": "8093:80"}, 409),  # no such forward
]


@pytest.mark.parametrize("method,body,status", BAD_BODIES)
def test_bad_requests_are_refused_in_one_line_and_change_nothing(agent, lab, method, body, status):
    before = rules(lab.host)
    resp = agent.send(method, "/v1/forwards", body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error and "\n" not in error
    assert rules(lab.host) == before
    assert json.loads(agent.audit.read_text().splitlines()[-1])["ok"] is False


def test_a_body_sent_without_the_json_content_type_is_refused(agent, lab):
    resp = requests.post(agent.base + "/v1/forwards", data='{"target": "c2", "mapping": "8094:80"}',
                         headers={**agent.auth, "Content-Type": "text/plain"}, timeout=30)
    assert resp.status_code == 400 and "Content-Type" in resp.json()["error"]


def test_a_read_only_agent_refuses_changes(lab, tmp_path):
    ro = start_agent(tmp_path, lab.host)
    try:
        assert ro.get("/v1/info").json()["read_only"] is True
        before = rules(lab.host)
        for method in ("POST", "DELETE"):
            resp = ro.send(method, "/v1/forwards", {"target": "c1", "mapping": "8080:80"})
            assert (resp.status_code, resp.json()) == (403, READ_ONLY)
        assert rules(lab.host) == before
        assert http(lab.client, f"http://{lab.host_ip}:8080/") == f"c1 saw {lab.client_ip}"
    finally:
        stop(ro.proc)


# ---- metrics ------------------------------------------------------------------------------

def test_metrics_parse_and_say_what_the_host_has(agent, lab):
    from prometheus_client.parser import text_string_to_metric_families

    resp = agent.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    found = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert set(found) == set(metrics.NAMES)
    assert found["bridgescope_namespaces"].samples[0].value >= 5
    forwards = {(s.labels["owner"], s.labels["reachable"]): s.value for s in found["bridgescope_forwards"].samples}
    assert forwards.get(("bridgescope", "true"), 0) >= 1  # c1's 8080, which the client reaches
    info = found["bridgescope_info"].samples[0]
    assert info.labels["name"] == lab.host
    count = next(s for s in found["bridgescope_collector_seconds"].samples if s.name.endswith("_count"))
    assert count.value >= 1  # the first full read


def test_metrics_follow_a_finding(agent, lab):
    from prometheus_client.parser import text_string_to_metric_families

    sh("ip", "link", "set", "docker0", "down", ns=lab.host)
    try:
        deadline, ids = time.monotonic() + 30, set()
        while time.monotonic() < deadline and not ids:
            found = {f.name: f for f in text_string_to_metric_families(agent.get("/metrics").text)}
            ids = {s.labels["id"] for s in found["bridgescope_findings"].samples
                   if s.labels["severity"] == "error"}
            time.sleep(0.3)
        assert ids
    finally:
        sh("ip", "link", "set", "docker0", "up", ns=lab.host)


# ---- starting ---------------------------------------------------------------------------

def run_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "BRIDGESCOPE_TOKEN"}
    return subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "agent", *args],
                          capture_output=True, text=True, timeout=60, env={**environ, **(env or {})})


def test_off_loopback_without_tls_the_agent_refuses_to_start(tmp_path):
    (tmp_path / "token").write_text("t0ken\n")
    res = run_agent("--listen", f"0.0.0.0:{free_port()}", "--token-file", str(tmp_path / "token"))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "TLS" in res.stderr and "--tls-cert" in res.stderr


def test_without_a_token_the_agent_refuses_to_start():
    res = run_agent("--listen", f"127.0.0.1:{free_port()}")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "token" in res.stderr


def self_signed(tmp: Path, names: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    cert, key = tmp / "agent.crt", tmp / "agent.key"
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=bridgescope-agent",
                    "-addext", f"subjectAltName={names}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_with_a_certificate_the_agent_serves_https(lab, tmp_path):
    cert, key = self_signed(tmp_path)
    tls = start_agent(tmp_path / "run", lab.host, "--tls-cert", str(cert), "--tls-key", str(key),
                      scheme="https", verify=str(cert))
    try:
        info = requests.get(tls.base + "/v1/info", headers=tls.auth, verify=str(cert), timeout=30)
        assert info.json()["name"] == lab.host
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(tls.base + "/v1/info", headers=tls.auth, timeout=30)  # the system's CAs
        with pytest.raises(requests.ConnectionError):
            requests.get(tls.base.replace("https", "http") + "/v1/info", headers=tls.auth, timeout=30)
        events = Events(tls, verify=str(cert))
        try:
            assert events.next()[1] == "graph"
        finally:
            events.close()
        refused = requests.get(tls.base + "/v1/info", verify=str(cert), timeout=30)
        assert refused.status_code == 401
    finally:
        stop(tls.proc)


def test_the_dashboard_checks_an_agent_dialled_by_address_against_the_certificates_name(lab, tmp_path):
    """In a cluster the agents answer at node IPs that one shared certificate cannot list:
    --agent-server-name checks the certificate against its service name instead."""
    from bridgescope.webui.fleet.client import Endpoint, request
    cert, key = self_signed(tmp_path, "DNS:bridgescope-agent.bridgescope.svc")
    tls = start_agent(tmp_path / "run", lab.host, "--tls-cert", str(cert), "--tls-key", str(key),
                      scheme="https", verify=False)
    try:
        named = Endpoint(tls.base, tls.token, str(cert), "bridgescope-agent.bridgescope.svc")
        assert request(named, "GET", "/v1/info")[0] == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            request(Endpoint(tls.base, tls.token, str(cert)), "GET", "/v1/info")
        with pytest.raises(ssl.SSLCertVerificationError):
            request(Endpoint(tls.base, tls.token, str(cert), "someone-else.example"), "GET", "/v1/info")
    finally:
        stop(tls.proc)
