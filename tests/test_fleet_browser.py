"""The fleet end to end: three sandbox labs (three simulated nodes), one `bridgescope agent` per
lab on 127.0.0.1, one `bridgescope serve --agent` x3, Debian's Chromium through Playwright.

The browser shows all three hosts; a kernel change on one reaches it; killing one agent marks
that host stale within 10 s while the others stay live, and restarting it brings it back
without a reload; a forward added through the dashboard's form on the second host carries real
traffic from that lab's client."""
from __future__ import annotations

import os
import time
from pathlib import Path

import fleet_labs
import pytest
import requests
import serve_process
from conftest import RUN_PREFIX, sh
from test_browser_dashboard import CSP_WATCH, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.kernel]

TOKEN = "fleet-dashboard-token"
NODES = ("node-1", "node-2", "node-3")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three labs and their agents; everything goes in the finalizer, whatever failed."""
    from bridgescope.plumbing.lab import sandbox

    state = tmp_path_factory.mktemp("fleet-state")
    old = os.environ.get("BRIDGESCOPE_STATE_DIR")
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(state)
    prefixes = [f"{RUN_PREFIX}n{i}" for i in range(1, 4)]
    agents: list[fleet_labs.Agent] = []
    try:
        labs = [sandbox.lab_up(p) for p in prefixes]
        tmp = tmp_path_factory.mktemp("fleet-agents")
        agents = [fleet_labs.make_agent(n, lab.host, tmp, state) for n, lab in zip(NODES, labs)]
        for a in agents:
            a.start()
        yield dict(zip(NODES, labs)), dict(zip(NODES, agents)), state
    finally:
        for a in agents:
            a.stop()
        for p in prefixes:
            sandbox.lab_down(p)
        if old is None:
            os.environ.pop("BRIDGESCOPE_STATE_DIR", None)
        else:
            os.environ["BRIDGESCOPE_STATE_DIR"] = old


@pytest.fixture(scope="module")
def dashboard(fleet, tmp_path_factory):
    _, agents, state = fleet
    log = tmp_path_factory.mktemp("fleet-serve") / "serve.log"
    args = ["--agent-token-file", str(agents["node-1"].token_file), "--audit-log", str(state / "dashboard-audit.jsonl")]
    for a in agents.values():
        args += ["--agent", a.url]
    with serve_process.serving(None, TOKEN, state, log, args=args, timeout=60) as base:
        yield base, state / "dashboard-audit.jsonl"


def open_page(browser, base: str, width: int, height: int, query: str = ""):
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # a 409 is how the agent refuses a conflicting forward (the test asks for one on purpose)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 409" not in m.text else None)
    page.goto(f"{base}/?token={TOKEN}{query}")
    wait_js(page, "!!(window.cy && cy.nodes('[kind = \"fleethost\"]').length === 3)", 120)
    return context, page, errors


def host_state(page, name: str) -> str:
    return page.evaluate(f"(document.querySelector('#fleet-hosts li[data-host=\"{name}\"]') || {{dataset: {{}}}}).dataset.state || ''")


def all_live(page) -> bool:
    return all(host_state(page, n) == "live" for n in NODES)


def labelled(page, host: str, label: str) -> str:
    return (f"cy.nodes().filter(n => n.data('host') === {host!r} && n.data('label') === {label!r})")


def test_three_hosts_live_change_stale_back_and_a_forward_through_the_form(browser, dashboard, fleet, artifacts_dir):
    labs, agents, _ = fleet
    base, audit = dashboard
    # every element drawn (no bridge folded), so the checks can find each host's containers
    context, page, errors = open_page(browser, base, 1366, 768, "&fold=never")
    try:
        wait_js(page, "document.querySelectorAll('#fleet-hosts li[data-state=\"live\"]').length === 3", 60)
        # every host in its own box, with its own containers and its own forward
        for n in NODES:
            wait_js(page, labelled(page, n, "c1") + ".length === 1", 60)
            assert page.evaluate("bridgescopeBoxes.ancestors(" + labelled(page, n, "c1") + "[0]).last().id()") == f"fleet:{n}"
        # search across hosts: who publishes 8080? one forward on every host
        page.fill("#graph-search", "8080")
        wait_js(page, "cy.$('.match').length >= 3")
        hosts = page.evaluate("[...new Set(cy.$('.match').filter(n => n.data('kind') === 'portforward').map(n => n.data('host')))].sort()")
        assert hosts == list(NODES)
        page.fill("#graph-search", "")
        page.screenshot(path=str(artifacts_dir / "fleet-3-hosts-1366.png"))

        # a kernel change on node-3 reaches the browser (a delta, no reload)
        page.evaluate("window.fleetMarker = 1")
        sh("ip", "link", "add", "flx3a", "type", "veth", "peer", "name", "flx3b", ns=labs["node-3"].host)
        wait_js(page, labelled(page, "node-3", "flx3a") + ".length === 1", 30)
        assert page.evaluate(labelled(page, "node-1", "flx3a") + ".length") == 0

        # node-2's agent dies: stale within 10 s, its picture kept, the others live
        before = page.evaluate("cy.nodes().filter(n => n.data('host') === 'node-2').length")
        agents["node-2"].kill()
        t0 = time.monotonic()
        wait_js(page, "document.querySelector('#fleet-hosts li[data-host=\"node-2\"]').dataset.state === 'stale'", 10)
        assert time.monotonic() - t0 < 10
        assert host_state(page, "node-1") == host_state(page, "node-3") == "live"
        assert page.evaluate("cy.getElementById('fleet:node-2').data('state')") == "stale"
        assert page.evaluate("cy.getElementById('fleet:node-2').style('border-style')") == "dashed"
        assert "stale since" in page.evaluate("cy.getElementById('fleet:node-2').data('label')")
        assert page.evaluate("cy.nodes().filter(n => n.data('host') === 'node-2').length") == before
        page.screenshot(path=str(artifacts_dir / "fleet-3-hosts-one-stale-1366.png"))
        # back without a reload
        agents["node-2"].start()
        wait_js(page, "document.querySelector('#fleet-hosts li[data-host=\"node-2\"]').dataset.state === 'live'", 60)
        assert page.evaluate("cy.getElementById('fleet:node-2').data('state')") == "live"
        assert page.evaluate("window.fleetMarker") == 1

        # a forward through the dashboard's form on node-2 carries traffic from node-2's client
        page.select_option("#fleet-forward-host", "node-2")
        page.fill("#fleet-forward-container", "c2")
        page.fill("#fleet-forward-spec", "9093:80")
        page.click("#fleet-forward button[value=add]")
        wait_js(page, "document.getElementById('fleet-forward-outcome').dataset.ok === 'true'", 60)
        lab2 = labs["node-2"]
        res = None
        for _ in range(20):
            res = sh("curl", "-s", "-m", "2", f"http://{lab2.host_ip}:9093/", ns=lab2.client, check=False)
            if res.returncode == 0:
                break
            time.sleep(0.5)
        assert res.returncode == 0 and res.stdout.startswith("c2 saw"), res
        # only node-2 got it, and the picture shows it there
        wait_js(page, "cy.nodes('[kind = \"portforward\"]').filter(n => n.data('host_port') === 9093).map(n => n.data('host')).join() === 'node-2'", 30)
        for other in ("node-1", "node-3"):
            assert sh("curl", "-s", "-m", "2", f"http://{labs[other].host_ip}:9093/", ns=labs[other].client,
                      check=False).returncode != 0
        entries = audit.read_text()
        assert '"host": "node-2"' in entries and "9093:80" in entries
        # a refusal from the agent comes back with its own words: the same forward again conflicts
        page.click("#fleet-forward button[value=add]")
        wait_js(page, "document.getElementById('fleet-forward-outcome').dataset.ok === 'false'", 30)
        assert page.inner_text("#fleet-forward-outcome").strip()
    finally:
        page.screenshot(path=str(artifacts_dir / "fleet-final-1366.png"))
        context.close()
    assert not errors, errors


@pytest.mark.parametrize("width,height", [(1366, 768), (1920, 1080)])
def test_screenshots_of_the_three_host_view(browser, dashboard, fleet, artifacts_dir, width, height):
    base, _ = dashboard
    for a in fleet[1].values():
        if a.proc is None:
            a.start()
    context, page, errors = open_page(browser, base, width, height)
    try:
        wait_js(page, "document.querySelectorAll('#fleet-hosts li[data-state=\"live\"]').length === 3", 60)
        wait_js(page, "cy.nodes('[kind = \"namespace\"][?is_host]').length === 3", 60)
        time.sleep(0.5)  # the fit's animation
        path = artifacts_dir / f"fleet-3-hosts-{width}.png"
        page.screenshot(path=str(path))
        if width == 1366 and os.environ.get("BRIDGESCOPE_UPDATE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "fleet-3-hosts.png"))
        # the host boxes are drawn apart: no two overlap on screen
        boxes = page.evaluate("cy.nodes('[kind = \"fleethost\"]').map(n => n.renderedBoundingBox())")
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a["x2"] <= b["x1"] or b["x2"] <= a["x1"] or a["y2"] <= b["y1"] or b["y2"] <= a["y1"]
    finally:
        context.close()
    assert not errors, errors


def test_agent_api_is_not_reachable_without_the_token(fleet):
    _, agents, _ = fleet
    a = agents["node-1"]
    if a.proc is None:
        a.start()
    assert requests.get(a.url + "/v1/info", timeout=10).status_code == 401
