"""`serve --kubernetes-agents` end to end: a real dashboard process finds real agents through
the Kubernetes API and shows their hosts as the agents come and go.

Only the API server is simulated (tests/fake_kube.py, over TLS with its own CA; it answers
only for the namespace the account names). The dashboard runs as in a pod: its service
account (token, ca.crt, namespace) mounted at the usual path in a mount namespace of its own,
KUBERNETES_SERVICE_HOST/PORT naming the fake API; the token is rotated while it runs, as the
kubelet does. Two sandbox labs each have a real TLS agent named after its node, both with one
certificate for the Service's name, as deploy/kubernetes sets them up.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import RUN_PREFIX
from fake_kube import NS, SERVICE, TOKEN, FakeApi, as_pod, endpoint, endpoint_slice
from serve_process import free_port, serving, stop
from test_agent import self_signed, start_agent

from bridgescope.plumbing.lab import sandbox as lab_mod
from bridgescope.webui.fleet.discovery import SERVICE_ACCOUNT

pytestmark = pytest.mark.kernel

AGENTS_NAME = "bridgescope-agents.test"  # the Service's name in the agents' one certificate
AGENT_TOKEN = "kube-wiring-agent-token"
WAIT = 60.0  # seconds: an agent's first picture on a busy 2-CPU machine, with margin


@pytest.fixture(scope="module")
def labs() -> Iterator[tuple[lab_mod.LabInfo, lab_mod.LabInfo]]:
    prefixes = [f"{RUN_PREFIX}{secrets.token_hex(2)}" for _ in range(2)]
    try:
        yield tuple(lab_mod.lab_up(p) for p in prefixes)
    finally:
        for p in prefixes:
            lab_mod.lab_down(p)


def service_account(tmp: Path, api_ca: Path) -> Path:
    account = tmp / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "ca.crt").write_bytes(api_ca.read_bytes())
    (account / "namespace").write_text(NS)
    return account


def rotate(account: Path, api: FakeApi) -> None:
    """What the kubelet does before a projected token expires: a new one, swapped in atomically;
    the API server then accepts only the new one."""
    fresh = account / "token.new"
    fresh.write_text(secrets.token_urlsafe(16) + "\n")
    os.replace(fresh, account / "token")
    api.token = (account / "token").read_text().strip()


def until(fn: Callable[[], object], what: str, explain: Callable[[], str]) -> object:
    deadline = time.monotonic() + WAIT
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT:.0f} s: {what}\n{explain()}")
        time.sleep(0.1)
    return value


def test_serve_follows_the_agents_the_api_lists_and_watches(labs, tmp_path):
    account_there = SERVICE_ACCOUNT.exists()
    nodes = dict(zip(("node-a", "node-b"), labs))
    cert, key = self_signed(tmp_path, f"DNS:{AGENTS_NAME}")
    (tmp_path / "api").mkdir()
    api_cert, api_key = self_signed(tmp_path / "api")  # IP:127.0.0.1, where the pod dials it
    api = FakeApi(tls=(api_cert, api_key))
    token_file = tmp_path / "agent-token"
    token_file.write_text(AGENT_TOKEN + "\n")
    dashboard_token = secrets.token_urlsafe(16)
    log = tmp_path / "serve.log"
    agents = []
    try:
        for node, lab in nodes.items():
            agents.append(start_agent(tmp_path / node, lab.host, "--name", node, "--tls-cert", str(cert),
                                      "--tls-key", str(key), scheme="https", verify=False, token=AGENT_TOKEN))
        ports = dict(zip(nodes, (int(a.base.rsplit(":", 1)[1]) for a in agents)))

        def slice_of(node: str, ready: bool = True) -> dict:
            """One slice per agent: a slice has one port list, and the two agents share 127.0.0.1."""
            return endpoint_slice(f"agents-{node}", endpoint("127.0.0.1", node, f"agent-{node}", ready),
                                  port=ports[node])

        api.change("ADDED", slice_of("node-a"))
        account = service_account(tmp_path, api_cert)
        with serving(None, dashboard_token, tmp_path / "state", log, timeout=WAIT,
                     args=["--kubernetes-agents", SERVICE, "--agent-token-file", str(token_file),
                           "--agent-ca", str(cert), "--agent-server-name", AGENTS_NAME],
                     env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)},
                     prefix=as_pod(account)) as base:
            def hosts() -> dict[str, dict]:
                resp = requests.get(base + "/api/fleet/hosts", timeout=10,
                                    headers={"Authorization": f"Bearer {dashboard_token}"})
                resp.raise_for_status()
                return {h["name"]: h for h in resp.json()}

            def live(*names: str) -> bool:
                """Exactly these hosts, each live with its lab's containers drawn."""
                now = hosts()
                return set(now) == set(names) and all(
                    now[n]["state"] == "live" and now[n]["containers"] == len(nodes[n].containers) for n in names)

            def explain() -> str:
                return (f"hosts: {hosts()}\nAPI: {api.lists} list(s), watches from {api.watched_from}\n"
                        f"serve's log:\n{log.read_text()[-3000:]}")

            until(lambda: live("node-a"), "node-a, listed by the API, live with its lab's containers", explain)
            until(lambda: api.watches, "the dashboard watching the EndpointSlices", explain)
            rotate(account, api)
            api.expire()  # the watch ends: the list after it must carry the rotated token
            until(lambda: api.lists == 2 and len(api.watched_from) == 2,
                  "a list and a watch again, with the token the kubelet rotated", explain)
            api.change("ADDED", slice_of("node-b"))
            until(lambda: live("node-a", "node-b"), "node-b, added by a watch event, live beside node-a", explain)
            api.change("MODIFIED", slice_of("node-a", ready=False))
            until(lambda: live("node-b"), "node-a gone once its endpoint is not ready", explain)
            api.change("DELETED", api.slices["agents-node-b"])
            until(lambda: hosts() == {}, "no host once the last slice is deleted", explain)
            assert api.lists == 2, f"the watch was lost and listed again\n{explain()}"
    finally:
        api.close()
        for a in agents:
            stop(a.proc)
    assert SERVICE_ACCOUNT.exists() == account_there, "the pod's service account mount reached the host"


def serve_once(env: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "BRIDGESCOPE_"))}
    return subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "serve", "--listen",
                           f"127.0.0.1:{free_port()}", "--kubernetes-agents", SERVICE],
                          capture_output=True, text=True, timeout=60,
                          env={**environ, "BRIDGESCOPE_AGENT_TOKEN": AGENT_TOKEN, **env})


def test_outside_a_pod_serve_refuses_in_one_line_before_serving(tmp_path):
    res = serve_once({"BRIDGESCOPE_STATE_DIR": str(tmp_path)})
    assert res.returncode == 1 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "KUBERNETES_SERVICE_HOST" in res.stderr, res.stderr


@pytest.mark.skipif(SERVICE_ACCOUNT.exists(), reason="this machine has a service account")
def test_without_the_service_account_serve_refuses_in_one_line_before_serving(tmp_path):
    res = serve_once({"BRIDGESCOPE_STATE_DIR": str(tmp_path), "KUBERNETES_SERVICE_HOST": "127.0.0.1"})
    assert res.returncode == 1 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and str(SERVICE_ACCOUNT / "token") in res.stderr, res.stderr
