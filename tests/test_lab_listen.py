"""A lab container's published port nothing listens on: the panel says so and offers to start
the lab's echo server there; the button works in a lab only, and is audited either way.

A real sandbox lab under this run's prefix; the client namespace connects for real."""
from __future__ import annotations

import re
import secrets
import time

import pytest
from conftest import RUN_PREFIX, sh

from bridgescope.plumbing import api
from bridgescope.plumbing.lab import sandbox as lab
from bridgescope.webui import verdicts
from bridgescope.webui.app import create_app

pytestmark = pytest.mark.kernel

BASE = "http://127.0.0.1:8470"


@pytest.fixture
def lab_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))
    prefix = f"{RUN_PREFIX}{secrets.token_hex(2)}"
    yield prefix
    lab.lab_down(prefix)


def ask(ns: str, port: int) -> str:
    """What a client beyond the host gets from the lab host's port: the answer or the error."""
    done = sh("curl", "-sS", "-m", "5", f"http://{lab.HOST_UPLINK}:{port}/", ns=ns, check=False)
    return done.stdout if done.returncode == 0 else done.stderr


def panel_until(c, ns_id: str, wanted: str, present: bool = True) -> str:
    """The container's panel once the verdicts worker has read the sockets (a bound, not a
    timing assertion)."""
    deadline = time.monotonic() + 20
    while True:
        html = c.get(f"/details/{ns_id}", base_url=BASE, headers={"HX-Request": "true"}).get_data(as_text=True)
        if (wanted in html) == present or time.monotonic() > deadline:
            return html
        time.sleep(0.2)


def test_the_panel_starts_the_labs_echo_server_on_a_port_nothing_answers(lab_prefix):
    info = lab.lab_up(lab_prefix)
    api.add_forward("c1", "8081:81", host=info.host)
    assert "curl: (7)" in ask(info.client, 8081)  # refused: an RST at once

    app = create_app({"NO_AUTH": True, "HOST": info.host, "TESTING": True})
    rt = app.extensions["bridgescope"]
    try:
        c = app.test_client()
        snap = rt.source.snapshot
        c1 = next(n.id for n in snap.namespaces if n.name == f"{info.host}-c1")
        host = next(n.id for n in snap.namespaces if n.name == info.host)
        html = panel_until(c, c1, "tcp/81 (host port 8081)")
        assert "published ports with no listener" in html and "tcp/81 (host port 8081)" in html
        assert "Start the lab's echo server on tcp/81" in html
        assert "echo server on tcp/80" not in html  # c1 serves port 80 already
        page = c.get(f"/details/{c1}", base_url=BASE).get_data(as_text=True)
        csrf = {"X-CSRF-Token": re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)}

        # refused, audited, nothing started: no CSRF; not a published port; not a lab's container
        assert c.post(f"/details/{c1}/listen", data={"port": "81"}, base_url=BASE).status_code in (400, 403)
        bad_port = c.post(f"/details/{c1}/listen", data={"port": "82"}, headers=csrf, base_url=BASE)
        not_lab = c.post(f"/details/{host}/listen", data={"port": "81"}, headers=csrf, base_url=BASE)
        assert (bad_port.status_code, not_lab.status_code) == (422, 409)
        assert "not a container of a lab" in not_lab.get_data(as_text=True)
        refusals = [e.result for e in rt.audit.recent() if e.request.get("path", "").endswith("/listen")]
        assert sum(r.startswith("refused:") for r in refusals) == 3  # the CSRF one too
        assert "curl: (7)" in ask(info.client, 8081)  # refused: an RST at once

        done = c.post(f"/details/{c1}/listen", data={"port": "81"}, headers={**csrf, "HX-Request": "true"},
                      base_url=BASE)
        assert done.status_code == 200, done.get_data(as_text=True)
        assert "tcp/81 (host port 8081)" not in done.get_data(as_text=True)
        assert f"{info.host}-c1 saw" in ask(info.client, 8081)
        entry = rt.audit.recent()[0]
        assert entry.ok and entry.result.startswith("ok: the echo server listens on tcp/81")
        assert any("bridgescope.plumbing.lab.echo_server" in cmd for cmd in entry.commands)
    finally:
        verdicts.worker(rt.source).stop()
        rt.stop()
