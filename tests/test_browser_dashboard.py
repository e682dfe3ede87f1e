"""The dashboard in Debian's Chromium, against the sandbox lab and a real `bridgescope serve`.

One lab (unique prefix from this run) and one server for the module; the lab goes away in a
finalizer even when a test fails. Waiting is done by polling page state from Python: the page's
CSP forbids eval, which Playwright's wait_for_function needs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serve_process
from conftest import RUN_PREFIX, sh

pytestmark = [pytest.mark.browser, pytest.mark.kernel]

TOKEN = "browser-test-token"
VENV_BIN = Path(sys.executable).parent


def wait_js(page, expr: str, timeout: float = 30.0):
    """Poll a JS expression until truthy (bounded; a failure names what never happened)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expr)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never became true: {expr}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bs-state")


@pytest.fixture(scope="module")
def lab(state_dir):
    from bridgescope.plumbing.lab import sandbox as lab_mod

    prefix = HOST_LABEL[:-len("-host")]
    old = os.environ.get("BRIDGESCOPE_STATE_DIR")
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(state_dir)
    try:
        info = lab_mod.lab_up(prefix)
        yield info
    finally:
        lab_mod.lab_down(prefix)
        if old is None:
            os.environ.pop("BRIDGESCOPE_STATE_DIR", None)
        else:
            os.environ["BRIDGESCOPE_STATE_DIR"] = old


@pytest.fixture(scope="module")
def server(lab, state_dir, tmp_path_factory):
    port = serve_process.free_port()
    log = tmp_path_factory.mktemp("bs-serve") / "serve.log"
    with log.open("w") as out:
        proc = serve_process.start(
            lab.host, port, args=("--audit-log", str(state_dir / "audit.jsonl")), output=out,
            env={"BRIDGESCOPE_TOKEN": TOKEN, "BRIDGESCOPE_STATE_DIR": str(state_dir)})
    try:
        # the Watcher reads every namespace of a busy machine before the first answer
        serve_process.wait_until_answering(proc, f"http://127.0.0.1:{port}/api/session", timeout=600,
                                           headers={"Authorization": f"Bearer {TOKEN}"}, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve_process.stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server, request, artifacts_dir):
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    # Chromium logs a blocked inline style as a console error too; this names the directive
    context.add_init_script(CSP_WATCH)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # A 422 is how the server answers a form with a marked field; anything else counts.
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 422" not in m.text else None)
    pg.goto(f"{server}/?token={TOKEN}")
    assert "token=" not in pg.url  # traded for this tab's session, in sessionStorage
    wait_js(pg, "!!(window.cy && window.cy.nodes && window.cy.nodes().length > 0)", 120)
    assert context.cookies() == []  # nothing a page on another port could be sent
    yield pg
    pg.screenshot(path=str(artifacts_dir / f"dashboard-{request.node.name}.png"))
    context.close()
    assert not errors, errors  # no CSP violation, no script error, no failed request


CSP_WATCH = ("document.addEventListener('securitypolicyviolation', (e) => console.error("
             "'CSP violation: ' + e.violatedDirective + ' ' + e.sourceFile + ':' + e.lineNumber));")


def ns_id(page, label: str) -> str:
    return wait_js(page, f"""(() => {{ const n = cy.nodes('[kind = "namespace"]').filter(
        n => n.data('label') === {label!r}); return n.nonempty() && n.id(); }})()""")


def click_namespace(page, label: str) -> None:
    """A real mouse click on the namespace box, at a point where nothing else lies on top."""
    box = f"JSON.stringify(cy.nodes('[kind = \"namespace\"]').filter(x => x.data('label') === {label!r}).renderedBoundingBox())"
    before, deadline = None, time.monotonic() + 15
    while time.monotonic() < deadline:  # the first layout may still be settling
        now = page.evaluate(box)
        if now == before:
            break
        before = now
        time.sleep(0.3)
    point = page.evaluate(f"""(() => {{
        const n = cy.nodes('[kind = "namespace"]').filter(x => x.data('label') === {label!r})[0];
        const r = document.getElementById('topology').getBoundingClientRect();
        const bb = n.renderedBoundingBox({{includeLabels: false}});
        for (let fy = 0.02; fy < 1; fy += 0.06) for (let fx = 0.1; fx < 1; fx += 0.1) {{
            const x = bb.x1 + fx * (bb.x2 - bb.x1), y = bb.y1 + fy * (bb.y2 - bb.y1);
            if (x < 5 || y < 5 || x > r.width - 5 || y > r.height - 30) continue;  // on screen only
            const pan = cy.pan(), z = cy.zoom();  // the hit test wants model coordinates
            const hit = cy.renderer().findNearestElement((x - pan.x) / z, (y - pan.y) / z, true, false);
            const under = document.elementFromPoint(r.left + x, r.top + y);
            if (hit && hit.id() === n.id() && under && under.closest('#topology')) return [r.left + x, r.top + y];
        }}
        return null; }})()""")
    assert point, f"no free spot to click on {label}"
    page.evaluate("() => { window.__taps = []; cy.on('tap', e => window.__taps.push(e.target === cy ? 'bg' : e.target.id())); }")
    page.mouse.click(*point)


HOST_LABEL = f"{RUN_PREFIX}ui-host"


def forward_node(port: int) -> str:
    """JS for the lab host's forward node on `port` (other hosts on this machine may have one too)."""
    return (f"cy.nodes('[kind = \"portforward\"][host_port = {port}]')"
            f".filter(n => n.parent().data('label') === {HOST_LABEL!r})")


def curl_from_client(lab, port: int, attempts: int = 20) -> subprocess.CompletedProcess:
    """HTTP through the forward from outside the host; retried a bounded number of times."""
    res = None
    for _ in range(attempts):
        res = sh("curl", "-s", "-m", "2", f"http://{lab.host_ip}:{port}/", ns=lab.client, check=False)
        if res.returncode == 0:
            break
        time.sleep(0.25)
    return res


def test_the_page_shows_the_lab_containers_and_forward_live(page, lab, artifacts_dir):
    for name in ("c1", "c2"):
        ns_id(page, f"{lab.host}-{name}")
    wait_js(page, forward_node(8080) + ".length === 1")
    c1_eth0 = page.evaluate(f"""{forward_node(8080)}.connectedEdges()[0].target().parent().data('label')""")
    assert c1_eth0 == f"{lab.host}-c1"
    assert page.inner_text("#live") == "live"
    assert "Add port forward" in page.inner_text("#forward-section")
    page.screenshot(path=str(artifacts_dir / "dashboard-lab.png"))


def test_clicking_a_container_opens_its_panel(page, lab):
    click_namespace(page, f"{lab.host}-c1")
    try:
        page.wait_for_selector("#details .details-head h2", timeout=10000)
    except Exception as err:
        raise AssertionError(f"taps {page.evaluate('window.__taps')}, details {page.inner_html('#details')[:300]}") from err
    assert page.inner_text("#details .details-head h2") == f"{lab.host}-c1"
    panel = page.locator("#p-forward-form")
    assert panel.get_by_label("Container", exact=True).input_value() == "c1"
    assert "8080:80/tcp" in page.inner_text("#details .panel-forms")
    assert "172.17.0.2" in page.inner_text("#details .facts")


def test_adding_and_removing_a_forward_through_the_form(page, lab):
    form = page.locator("#g-forward-form")
    form.get_by_label("Container", exact=True).select_option("c2")
    form.get_by_label("Host port").fill("9091")
    form.get_by_label("Container port").fill("80")
    form.get_by_label("Protocol").select_option("tcp")
    form.get_by_label("Host IP").fill("")
    form.get_by_role("button", name="Preview commands").click()
    page.wait_for_selector("#g-forward-form .outcome pre.commands")
    assert "--dport 9091" in page.inner_text("#g-forward-form pre.commands")
    assert page.evaluate(forward_node(9091) + ".length") == 0  # a preview changes nothing

    page.locator("#g-forward-form").get_by_role("button", name="Add port forward").click()
    wait_js(page, forward_node(9091) + ".length === 1")
    target = page.evaluate(forward_node(9091) + ".connectedEdges()[0].target().parent().data('label')")
    assert target == f"{lab.host}-c2"
    page.wait_for_selector("#g-forward-form .outcome.applied")
    res = curl_from_client(lab, 9091)
    assert res.returncode == 0 and res.stdout.startswith("c2 saw"), res
    wait_js(page, "document.querySelector('#audit-box').innerText.includes('add_forward')")

    page.locator("#g-forward-form").get_by_role("button", name="Remove port forward").click()
    page.locator("#g-forward-form").get_by_role("button", name="Confirm removal").click()
    wait_js(page, forward_node(9091) + ".length === 0")
    assert sh("curl", "-s", "-m", "2", f"http://{lab.host_ip}:9091/", ns=lab.client, check=False).returncode != 0


def test_a_validation_error_shows_next_to_the_field(page):
    form = page.locator("#g-forward-form")
    form.get_by_label("Container", exact=True).select_option("c1")
    form.get_by_label("Host port").fill("99999")
    form.get_by_label("Container port").fill("80")
    form.get_by_role("button", name="Add port forward").click()
    page.wait_for_selector("#g-forward-host_port-error")
    assert "1 to 65535" in page.inner_text("#g-forward-host_port-error")
    assert page.get_attribute("#g-forward-host_port", "aria-invalid") == "true"


def test_a_kernel_change_made_outside_the_ui_shows_up_live(page, lab):
    name = "bstuibr0"
    sh("ip", "-n", lab.host, "link", "add", name, "type", "bridge")
    try:
        wait_js(page, f"cy.nodes('[label = \"{name}\"]').length === 1")
        parent = page.evaluate(f"cy.nodes('[label = \"{name}\"]').parent().data('label')")
        assert parent == lab.host
    finally:
        sh("ip", "-n", lab.host, "link", "del", name, check=False)
    wait_js(page, f"cy.nodes('[label = \"{name}\"]').length === 0")


def test_search_export_and_reconnect_indicator(page, lab):
    page.fill("#graph-search", "172.17.0.3")
    wait_js(page, "document.getElementById('search-count').textContent.startsWith('1 found')")
    assert page.evaluate("cy.$('.match').map(e => e.parent().data('label'))") == [f"{lab.host}-c2"]
    with page.expect_download() as dl:
        page.click("#export-png")
    assert dl.value.suggested_filename == "bridgescope-topology.png"
    page.fill("#graph-search", "")


def test_collapsing_namespaces_keeps_their_links(page, lab):
    c1 = ns_id(page, f"{lab.host}-c1")
    page.check("#collapse-ns")
    wait_js(page, f"cy.getElementById({c1!r}).hasClass('collapsed')")
    linked = page.evaluate(f"cy.getElementById({c1!r}).connectedEdges('.collapsed-edge').connectedNodes().map(n => n.data('label'))")
    assert "docker0" in linked  # the bridge now links straight to the folded box
    page.uncheck("#collapse-ns")
    wait_js(page, f"!cy.getElementById({c1!r}).hasClass('collapsed') && cy.edges('.collapsed-edge').length === 0")


def test_a_tab_without_a_session_says_how_to_get_one(browser, server, page, artifacts_dir):
    # a link opened from a signed-in tab asks it for the session (same origin, BroadcastChannel)
    sibling = page.context.new_page()
    sibling.goto(f"{server}/tables/")
    wait_js(sibling, "!!document.getElementById('tables')")
    assert sibling.evaluate("sessionStorage.getItem('bridgescope-session')") == \
        page.evaluate("sessionStorage.getItem('bridgescope-session')")
    sibling.close()
    # a fresh browser profile has nothing: the boot page, no data, and what to do
    for name, url in (("no-session", f"{server}/"), ("wrong-token", f"{server}/?token=wrong")):
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        lone = context.new_page()
        lone.goto(url)
        wait_js(lone, "document.getElementById('boot').dataset.state === 'signed-out'")
        text = lone.inner_text("#boot")
        assert "bridgescope serve" in text and "?token=" in text, text
        assert "token=" not in lone.url and not lone.locator("#topology").count()
        lone.screenshot(path=str(artifacts_dir / f"boot-{name}.png"))
        context.close()
    # a session the server no longer knows (expired, or a restart): said so, no reload loop
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    tab.goto(f"{server}/audit?token={TOKEN}")
    wait_js(tab, "!!document.getElementById('theme-toggle')")
    tab.evaluate("sessionStorage.setItem('bridgescope-session', 'forgotten-by-the-server')")
    tab.reload()
    wait_js(tab, "!!document.getElementById('boot') && document.getElementById('boot').dataset.state === 'signed-out'")
    assert "session has expired" in tab.inner_text("#boot")
    tab.screenshot(path=str(artifacts_dir / "boot-expired.png"))
    context.close()


def test_json_export_downloads_with_the_session(page):
    with page.expect_download() as dl:
        page.click("#export-json")
    assert dl.value.suggested_filename == "bridgescope-topology.json"
    data = json.loads(Path(dl.value.path()).read_text())
    assert any(pf["host_port"] == 8080 for pf in data["port_forwards"])


def test_ip_forward_off_shows_on_the_doctor_link_and_the_forward_panel(page, lab, artifacts_dir):
    """The doctor everywhere: a kernel change nobody made through the UI reaches the nav's
    count within 2 s, and the forward's panel says what the verdict says."""
    wait_js(page, "document.getElementById('doctor-link').dataset.errors === '0'", 30)
    try:
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=lab.host)
        changed = time.monotonic()
        wait_js(page, "Number(document.getElementById('doctor-link').dataset.errors) > 0", 10)
        assert time.monotonic() - changed < 2.0
        assert page.inner_text("#doctor-count") != ""
        pf = wait_js(page, f"{forward_node(8080)}.length === 1 && {forward_node(8080)}[0].id()")
        page.evaluate(f"""() => htmx.ajax('GET', document.getElementById('topology').dataset.details
                          + encodeURIComponent({pf!r}), {{target: '#details', swap: 'innerHTML'}})""")
        page.wait_for_selector("#details .facts", timeout=10000)
        facts = page.inner_text("#details .facts")
        assert "not reachable (timeout): ip_forward is off on the host" in facts
        assert "reachable from outside\tyes" not in facts and "reachable from outside\nyes" not in facts
        for width, height in ((1366, 768), (1920, 1080)):
            page.set_viewport_size({"width": width, "height": height})
            page.screenshot(path=str(artifacts_dir / f"doctor-badge-{width}.png"))
    finally:
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=lab.host)
    wait_js(page, "document.getElementById('doctor-link').dataset.errors === '0'", 10)


# ---- panels, tables and forms follow the kernel ------------------------------------------------

def tap(page, selector_js: str) -> None:
    """Open an element's panel as a click on it does (Cytoscape's tap event)."""
    page.evaluate(f"{selector_js}[0].emit('tap')")
    page.wait_for_selector("#details-panel")


def namespace_js(label: str) -> str:
    return f"cy.nodes('[kind = \"namespace\"]').filter(n => n.data('label') === {label!r})"


def panel_packets(page) -> list[int]:
    return page.evaluate("[...document.querySelectorAll('#details-panel .rule-packets')].map(e => parseInt(e.textContent, 10))")


@pytest.fixture
def second_lab(lab, state_dir):
    """Another lab on the same machine: same bridge, same addresses, same forward."""
    from bridgescope.plumbing.lab import sandbox as lab_mod

    prefix = f"{RUN_PREFIX}u2"
    try:
        yield lab_mod.lab_up(prefix)
    finally:
        lab_mod.lab_down(prefix)


def test_with_two_labs_up_panels_and_tables_show_the_served_hosts_own(page, lab, second_lab, artifacts_dir):
    ns_id(page, f"{second_lab.host}-c1")  # the other lab is in the snapshot
    tap(page, namespace_js(f"{lab.host}-c1"))
    wait_js(page, f"document.querySelector('#details-panel h2').textContent === '{lab.host}-c1'")
    forwards = page.locator("#details-panel .forward-item")
    assert forwards.count() == 1, page.inner_text("#details-panel")
    assert f"firewall of {lab.host}" in forwards.inner_text()
    page.screenshot(path=str(artifacts_dir / "panel-two-labs.png"))
    page.goto(page.url.split("/?")[0].rstrip("/") + "/tables/")
    wait_js(page, "!!document.getElementById('forwards-table')")
    table = page.inner_text("#forwards-table")
    assert lab.host in table and second_lab.host not in table
    assert "-j BRIDGESCOPE-DNAT-0" not in page.inner_text("#rules-table")  # shard jumps hidden
    page.check("#table-every")
    wait_js(page, f"document.getElementById('forwards-table').innerText.includes({second_lab.host!r})")
    page.check("#table-scaffolding")
    wait_js(page, "document.getElementById('rules-table').innerText.includes('-j BRIDGESCOPE-DNAT-0')")


def test_an_open_panels_counters_follow_two_curls(page, lab, artifacts_dir):
    tap(page, forward_node(8080))
    wait_js(page, "document.querySelectorAll('#details-panel .rule-packets').length > 0")
    before = sum(panel_packets(page))
    for _ in range(2):
        res = curl_from_client(lab, 8080)
        assert res.returncode == 0, res
    wait_js(page, f"[...document.querySelectorAll('#details-panel .rule-packets')].map(e => parseInt(e.textContent, 10)).reduce((a, b) => a + b, 0) >= {before + 2}", 20)
    assert page.locator("#details-panel .counters-moved").count() >= 1
    page.screenshot(path=str(artifacts_dir / "panel-live-counter.png"))


def test_an_open_panel_follows_a_forward_added_and_removed(page, lab):
    from bridgescope.plumbing import api

    tap(page, namespace_js(f"{lab.host}-c2"))
    listed = "document.getElementById('details-panel').querySelector('.forward-list') && [...document.querySelectorAll('#details-panel .forward-item')].some(li => li.textContent.includes(':9092'))"
    assert not page.evaluate(listed)
    api.add_forward("c2", "9092:80", host=lab.host)
    try:
        wait_js(page, listed, 20)
        tap(page, forward_node(9092))
    finally:
        api.remove_forward("c2", "9092:80", host=lab.host)
    wait_js(page, "!!document.getElementById('panel-removed')", 20)
    assert "Removed" in page.inner_text("#panel-removed")


def test_form_choices_and_field_errors_follow_the_kernel(page, lab):
    from bridgescope.plumbing import api

    form = page.locator("#g-forward-form")
    form.get_by_label("Host port").fill("9093")
    form.get_by_label("Container port").fill("80")
    form.get_by_role("button", name="Add port forward").click()
    page.wait_for_selector("#g-forward-container-error")
    assert "Container is required" in page.inner_text("#g-forward-container-error")
    assert page.evaluate("document.activeElement.id") == "g-forward-container"  # focus on the marked field
    assert page.get_attribute("#g-forward-host_port", "placeholder").startswith("e.g.")
    api.create_container("c9", "docker0", host=lab.host)
    try:
        wait_js(page, "[...document.querySelectorAll('#g-forward-container option')].some(o => o.value === 'c9')", 20)
        form.get_by_label("Container", exact=True).select_option("c9")
        assert page.locator("#g-forward-container-error").count() == 0
        form.get_by_role("button", name="Preview commands").click()
        page.wait_for_selector("#g-forward-form pre.commands")
        # focus moves on to the button that applies what was previewed
        assert page.evaluate("document.activeElement.textContent") == "Add port forward"
    finally:
        api.remove_container("c9", host=lab.host)
    wait_js(page, "![...document.querySelectorAll('#g-forward-container option')].some(o => o.value === 'c9')", 20)


def test_no_csp_violation_on_any_page_or_swap(page, server, lab, artifacts_dir):
    # the fixture fails the test on any console error; these are the swaps each page makes
    tap(page, namespace_js(f"{lab.host}-c1"))
    tap(page, f"cy.nodes('[kind = \"masquerade\"]').filter(n => n.parent().data('label') === {lab.host!r})")
    assert "MASQUERADE" in page.inner_text("#details-panel h2")
    assert "is_host" not in page.inner_text("#details-panel")
    page.locator("#g-forward-form").get_by_label("Host port").fill("9094")
    page.locator("#g-forward-form").get_by_label("Host port").press("Tab")  # the live preview swaps
    page.wait_for_selector("#g-forward-form .outcome-message")
    for size in ((1366, 768), (1920, 1080)):
        page.set_viewport_size({"width": size[0], "height": size[1]})
        page.screenshot(path=str(artifacts_dir / f"panel-masquerade-{size[0]}.png"))
    base = page.url.split("/?")[0].rstrip("/")
    for path in ("/tables/", "/forms/", "/audit", "/workshop/doctor"):
        page.goto(base + path)
        wait_js(page, "!!document.getElementById('theme-toggle')")
        if path == "/tables/":
            page.fill("#table-q", "8080")
            wait_js(page, "document.getElementById('rules-table').innerText.includes('8080')")
            for size in ((1366, 768), (1920, 1080)):
                page.set_viewport_size({"width": size[0], "height": size[1]})
                page.screenshot(path=str(artifacts_dir / f"tables-{size[0]}.png"), full_page=True)
        time.sleep(0.5)
