"""The workshop's HTTP side against a real walk lab: pages, the attendee view, and bad input
(unknown steps and actions, steps out of order, bad packet-path choices) answered with one
clear message and no change."""
from __future__ import annotations

import re
import secrets

import pytest

from bridgescope.collector.model import Snapshot
from bridgescope.plumbing.lab.walklab import WalkLab
from bridgescope.webui.app import create_app, runtime
from bridgescope.webui.audit import AuditEntry

pytestmark = pytest.mark.kernel
BASE = "http://127.0.0.1:8470"


class NoHost:
    """The dashboard's own topology source is not what these tests are about."""
    snapshot, elements, version = Snapshot(), [], 0

    def subscribe(self):
        return None

    def unsubscribe(self, q) -> None:
        pass

    def refresh(self, ns_id=None) -> None:
        pass


@pytest.fixture
def client(run_prefix, tmp_path, monkeypatch):
    prefix = f"{run_prefix}h{secrets.token_hex(1)}"
    monkeypatch.setenv("BRIDGESCOPE_WALK_PREFIX", prefix)
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))
    app = create_app({"NO_AUTH": True, "SOURCE": NoHost(), "TESTING": True})
    lab = WalkLab(prefix)
    try:
        lab.up()
        c = app.test_client()
        page = c.get("/workshop/walk", base_url=BASE)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True)).group(1)
        yield c, {"X-CSRF-Token": csrf}, lab
    finally:
        ws = app.extensions.get("bridgescope_workshop")
        if ws is not None and ws._source is not None:
            ws._source.stop()
        lab.down()


def post(c, headers, url, **kw):
    return c.post(url, headers=headers, base_url=BASE, **kw)


def error_text(resp) -> str:
    return re.search(r'class="ws-error"[^>]*>([^<]*)<', resp.get_data(as_text=True)).group(1)


def test_walk_page_and_the_attendee_view(client):
    c, _, lab = client
    page = c.get("/workshop/walk", base_url=BASE).get_data(as_text=True)
    assert page.count('class="ws-step ') == len(lab.steps)
    assert 'id="do-bridge"' in page and "ip link add docker0 type bridge" in page
    follow = c.get("/workshop/walk?follow=1", base_url=BASE).get_data(as_text=True)
    assert "data-ws-post" not in follow and 'id="ws-path-form"' not in follow
    assert "<script>" not in page and " style=" not in page  # the CSP allows neither


def test_steps_through_http_and_the_state(client):
    c, h, lab = client
    assert post(c, h, "/workshop/walk/step/bridge/apply").status_code == 200
    resp = post(c, h, "/workshop/walk/step/gateway/apply")
    assert 'id="step-gateway" data-status="done"' in resp.get_data(as_text=True)
    state = c.get("/workshop/walk/state", base_url=BASE).get_json()
    assert state["progress"]["gateway"] == "done" and state["next"] == "bridge-up"
    assert [f["id"] for f in state["findings"]] == ["link-down"]
    lab_doctor = c.get("/workshop/doctor.json?lab=1", base_url=BASE).get_json()
    assert [f["id"] for f in lab_doctor["findings"]] == ["link-down"]


@pytest.mark.parametrize("url,status,message", [
    ("/workshop/walk/step/route/apply", 400, "do step &#39;Create the bridge&#39; first"),
    ("/workshop/walk/step/nonsense/apply", 400, "there is no walk step called &#39;nonsense&#39;"),
    ("/workshop/walk/step/bridge/fix", 400, "that action needs it to be wrong"),
])
def test_bad_walk_actions_change_nothing(client, url, status, message):
    c, h, lab = client
    resp = post(c, h, url)
    assert resp.status_code == status
    assert message in error_text(resp)
    assert set(lab.progress().values()) == {"pending"}


def test_unknown_action_is_404(client):
    c, h, _ = client
    assert post(c, h, "/workshop/walk/step/bridge/explode").status_code == 404


@pytest.mark.parametrize("form,field", [
    ({"source": "mars", "destination": "0"}, "source"),
    ({"source": "client", "destination": "9"}, "destination"),
    ({"source": "client", "destination": "-1"}, "destination"),
    ({"source": "container", "destination": "1"}, "source"),  # no container before the walk
    ({"source": "client", "destination": "\u00b2"}, "destination"),  # isdigit() yet not int()
    ({"source": "client", "destination": "1.0"}, "destination"),
    ({"source": "client", "destination": ""}, "destination"),
    ({"source": "client", "destination": "1", "probe": "yes"}, "probe"),
])
def test_bad_packet_path_choices(client, form, field):
    c, h, _ = client
    resp = post(c, h, "/workshop/walk/path", data=form)
    assert resp.status_code == 400 and resp.get_json()["field"] == field


def test_packet_path_from_the_client_before_any_step(client):
    c, h, _ = client
    body = post(c, h, "/workshop/walk/path", data={"source": "client", "destination": "0"}).get_json()
    # nothing is published yet: the host itself is where the packet ends, and nothing there listens
    assert body["delivered_to"] is None and body["steps"][-1]["kind"] == "refused"
    assert body["verdict"]["outcome"] == "refused" and "-host" in body["verdict"]["reason"]
    assert not any(s["kind"] == "nat" for s in body["steps"])


def test_details_of_a_missing_element_is_404(client):
    c, _, _ = client
    assert c.get("/workshop/walk/details/ns-0/if99", base_url=BASE).status_code == 404


def test_findings_are_computed_once_per_snapshot_object(monkeypatch):
    from bridgescope.collector.model import Namespace, Snapshot
    from bridgescope.webui import workshop as ws_mod

    calls = []
    monkeypatch.setattr(ws_mod, "diagnose", lambda snap: calls.append(snap) or ("finding",))
    host = Namespace("ns-1", "host", 1, is_host=True)
    snap = Snapshot(namespaces=(host,), host="ns-1")
    assert ws_mod.findings_of(snap) == ws_mod.findings_of(snap) == ("finding",)
    assert len(calls) == 1
    ws_mod.findings_of(Snapshot(namespaces=(host,), host="ns-1"))  # equal, but a new picture
    assert len(calls) == 2


def test_walk_actions_are_audited_with_what_they_ran(client):
    """Steps, refusals, the real probe, reset and removal change the kernel or start
    processes: each leaves an audit entry with the commands it ran."""
    c, h, lab = client
    audit = runtime(c.application).audit
    n = lab.names

    def last() -> AuditEntry:
        return audit.recent(1)[0]

    assert post(c, h, "/workshop/walk/step/bridge/apply").status_code == 200
    assert last().request["action"] == "walk-apply" and last().ok
    assert last().commands == ("ip link add docker0 type bridge",)
    assert post(c, h, "/workshop/walk/step/route/apply").status_code == 400
    assert not last().ok and last().result.startswith("error: do step")
    resp = post(c, h, "/workshop/walk/path", data={"source": "client", "destination": "1", "probe": "1"})
    assert resp.get_json()["probe"]["connected"]
    assert last().request["action"] == "walk-probe" and last().request["args"]["probe"] == "1"
    assert last().commands[0].startswith(f"ip netns exec {n.client} curl ") and "203.0.113.10:80" in \
        last().commands[0]
    assert post(c, h, "/workshop/walk/reset").status_code == 200
    reset = last()
    assert reset.request["action"] == "walk-reset" and reset.ok
    assert f"ip netns del {n.host}" in reset.commands and f"ip netns add {n.host}" in reset.commands
    assert any(cmd.startswith("kill -KILL ") for cmd in reset.commands)  # the old internet server
    assert any(" -I -m bridgescope.plumbing.lab.echo_server internet 80" in cmd for cmd in reset.commands)
    assert post(c, h, "/workshop/walk/down").status_code == 200
    assert last().request["action"] == "walk-down" and not lab.is_up()
    assert {f"ip netns del {name}" for name in (n.host, n.inet, n.client)} <= set(last().commands)
    assert "csrf_token" not in str([e.request for e in audit.recent()])


# ---- the walk as an instructor needs it ---------------------------------------------------------

def _step_block(html: str, key: str) -> str:
    start = html.index(f'id="step-{key}"')
    end = html.find('<li class="ws-step', start)
    return html[start:end if end > 0 else len(html)]


def test_a_failed_step_says_so_at_that_step(client):
    c, h, _ = client
    html = post(c, h, "/workshop/walk/step/route/apply").get_data(as_text=True)
    assert "do step &#39;Create the bridge&#39; first" in _step_block(html, "route")
    assert html.count('class="ws-error"') == 1  # once, at the step, not again at the top


def test_missing_pieces_of_steps_to_come_are_not_built_yet_not_errors(client):
    c, h, lab = client
    post(c, h, "/workshop/walk/step/bridge/apply")
    html = post(c, h, "/workshop/walk/step/gateway/apply").get_data(as_text=True)
    later = html.split('id="ws-later"')[1]
    assert "link-down" in later and "not built yet" in later
    assert "sev-error" not in html.split('id="ws-doctor"')[1] and "sev-warning" not in html.split('id="ws-doctor"')[1]
    assert "Step 3 of 14" in html and "(2 done)" in html
    lab_doctor = c.get("/workshop/doctor.json?lab=1", base_url=BASE).get_json()["findings"]
    assert [(f["id"], f["later"]) for f in lab_doctor] == [("link-down", True)]  # no red badge for it
    # once the step that brings links up is behind us, a link down is a real finding again
    from bridgescope.collector.doctor.finding import Finding
    from bridgescope.webui.workshop import split_findings

    down = Finding("link-down", "error", ("x",), "t", "e", ())
    progress = {s.key: "done" for s in lab.steps}
    assert split_findings([down], lab.steps, progress) == ([down], [])
    assert split_findings([down], lab.steps, {**progress, "up": "pending"}) == ([], [down])


def test_walk_page_names_the_lab_host_offers_keys_and_a_handout(client):
    c, _, lab = client
    page = c.get("/workshop/walk", base_url=BASE).get_data(as_text=True)
    assert f"host: {lab.names.host}" in page and 'id="ws-keys"' in page
    assert page.count("data-ws-confirm=") == 2  # Reset and Remove ask first
    assert "Step 1 of 14" in page
    md = c.get("/workshop/walk/handout.md", base_url=BASE)
    text = md.get_data(as_text=True)
    assert md.mimetype == "text/markdown" and "attachment" in md.headers["Content-Disposition"]
    assert text.count("\n## ") == len(lab.steps) == 14
    assert "ip link add docker0 type bridge" in text and "masquerade-mask-mismatch" in text
