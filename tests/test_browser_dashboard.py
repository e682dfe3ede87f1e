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
from urllib.parse import urlparse

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
            status = page.evaluate("document.getElementById('graph-status')?.textContent")
            raise AssertionError(f"never became true: {expr} (the status line says {status!r})")
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
    log = tmp_path_factory.mktemp("bs-serve") / "serve.log"
    with serve_process.serving(lab.host, TOKEN, state_dir, log,
                               args=("--audit-log", str(state_dir / "audit.jsonl"))) as base:
        yield base


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
        n => [n.data('ns_name'), n.data('label')].includes({label!r})); return n.nonempty() && n.id(); }})()""")


def click_namespace(page, label: str) -> None:
    """A real mouse click on the namespace box, at a point where nothing else lies on top."""
    point = free_spot(page, label)
    page.evaluate("() => { window.__taps = []; cy.on('tap', e => window.__taps.push(e.target === cy ? 'bg' : e.target.id())); }")
    page.mouse.click(*point)


def free_spot(page, label: str) -> tuple[float, float]:
    """A point of the page on the namespace's box where nothing else lies on top."""
    box = f"JSON.stringify(cy.nodes('[kind = \"namespace\"]').filter(x => [x.data('ns_name'), x.data('label')].includes({label!r})).renderedBoundingBox())"
    before, deadline = None, time.monotonic() + 15
    while time.monotonic() < deadline:  # the first layout may still be settling
        now = page.evaluate(box)
        if now == before:
            break
        before = now
        time.sleep(0.3)
    point = page.evaluate(f"""(() => {{
        const n = cy.nodes('[kind = "namespace"]').filter(x => [x.data('ns_name'), x.data('label')].includes({label!r}))[0];
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
    return tuple(point)


def drag(page, start: tuple[float, float], dx: float, dy: float) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(start[0] + dx * k / 10, start[1] + dy * k / 10)
    page.mouse.up()


HOST_LABEL = f"{RUN_PREFIX}ui-host"


def forward_node(port: int) -> str:
    """JS for the lab host's forward node on `port` (other hosts on this machine may have one too)."""
    return (f"cy.nodes('[kind = \"portforward\"][host_port = {port}]')"
            f".filter(n => cy.getElementById(n.data('netns')).data('label') === {HOST_LABEL!r})")


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
    for name in ("c1", "c2"):  # labelled by container name, not by namespace name
        assert page.evaluate(f"cy.getElementById({ns_id(page, name)!r}).data('ns_name')") == f"{lab.host}-{name}"
    wait_js(page, forward_node(8080) + ".length === 1")
    # the forward is a badge in c1's box, its arrow ends at c1's eth0
    target = page.evaluate(f"""(() => {{ const e = {forward_node(8080)}.connectedEdges()[0];
        return [e.target().data('label'), bridgescopeBoxes.parent(e.target()).data('label'), bridgescopeBoxes.parent({forward_node(8080)}).data('label')]; }})()""")
    assert target == ["eth0", "c1", "c1"]
    assert page.inner_text("#live") == "live"
    assert "Add port forward" in page.inner_text("#forward-section")
    page.screenshot(path=str(artifacts_dir / "dashboard-3-containers.png"))


def test_clicking_a_container_opens_its_panel(page, lab):
    click_namespace(page, "c1")
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
    target = page.evaluate("bridgescopeBoxes.parent(" + forward_node(9091) + ".connectedEdges()[0].target()).data('label')")
    assert target == "c2"
    page.wait_for_selector("#g-forward-form .outcome.applied")
    res = curl_from_client(lab, 9091)
    assert res.returncode == 0 and res.stdout.startswith("c2 saw"), res
    wait_js(page, "document.querySelector('#audit-box').innerText.includes('add_forward')")

    page.locator("#g-forward-form").get_by_role("button", name="Remove port forward").click()
    page.locator("#g-forward-form").get_by_role("button", name="Confirm removal").click()
    wait_js(page, forward_node(9091) + ".length === 0")
    assert sh("curl", "-s", "-m", "2", f"http://{lab.host_ip}:9091/", ns=lab.client, check=False).returncode != 0


def tab_to(page, js_test: str, presses: int = 80) -> None:
    """Press Tab until the focused element passes js_test (an expression over `el`)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!el && ({js_test}); }})()"):
            return
    raise AssertionError(f"Tab never reached {js_test}")


def test_every_node_is_reachable_from_the_keyboard_list(page, lab):
    c1 = ns_id(page, "c1")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    tab_to(page, "el.matches('#graph-list > summary')")
    page.keyboard.press("Enter")  # opens the list
    wait_js(page, "document.querySelectorAll('#graph-list-items button').length > 0", 10)
    listed = set(page.evaluate("[...document.querySelectorAll('#graph-list-items button')].map(b => b.dataset.elementId)"))
    drawn = set(page.evaluate("cy.nodes().filter(n => !n.hasClass('fold') && ['namespace', 'bridge', 'portforward']"
                              ".includes(n.data('kind')) && n.visible()).map(n => n.id())"))
    assert drawn <= listed
    tab_to(page, f"el.dataset.elementId === {c1!r}")
    page.keyboard.press("Enter")
    page.wait_for_selector("#details .details-head h2", timeout=10000)
    assert page.inner_text("#details .details-head h2") == f"{lab.host}-c1"
    assert page.evaluate(f"cy.getElementById({c1!r}).selected()")
    # the focus ring: at least 3:1 against the page behind the focused button
    ring = page.evaluate("getComputedStyle(document.activeElement).outlineColor")
    back = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert contrast(ring, back) >= 3


def test_the_keyboard_list_keeps_its_focus_through_a_delta(page, lab):
    # The list is rebuilt whenever the picture changes: on a busy host a keyboard user would
    # otherwise be thrown out of it at every change.
    c1 = ns_id(page, "c1")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    tab_to(page, "el.matches('#graph-list > summary')")
    page.keyboard.press("Enter")
    wait_js(page, "document.querySelectorAll('#graph-list-items button').length > 0", 10)
    tab_to(page, f"el.dataset.elementId === {c1!r}")
    name = "bstuifocus0"
    sh("ip", "-n", lab.host, "link", "add", name, "type", "bridge")
    try:
        wait_js(page, f"[...document.querySelectorAll('#graph-list-items button')].some(b => b.textContent.includes({name!r}))")
        assert page.evaluate("document.activeElement.dataset.elementId") == c1
    finally:
        sh("ip", "-n", lab.host, "link", "del", name, check=False)


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
        parent = page.evaluate(f"bridgescopeBoxes.parent(cy.nodes('[label = \"{name}\"]')).data('label')")
        assert parent == lab.host
    finally:
        sh("ip", "-n", lab.host, "link", "del", name, check=False)
    wait_js(page, f"cy.nodes('[label = \"{name}\"]').length === 0")


def test_the_status_line_counts_containers_that_arrive_after_the_page(page, lab):
    # The count is what people check first: it follows the deltas, not only the first picture.
    status = "document.getElementById('graph-status').textContent"
    wait_js(page, f"/^\\d+ namespaces/.test({status})")
    before = int(page.evaluate(status).split()[0])
    try:
        grow(lab, 0, 2, stem="late")
        wait_js(page, f"{status}.startsWith('{before + 2} namespaces')")
    finally:
        for i in range(2):
            sh("ip", "netns", "del", f"{RUN_PREFIX}late{i}", check=False)
    wait_js(page, f"{status}.startsWith('{before} namespaces')")


# Boxes tied by an edge to what they hold: JS giving their labels.
BOXES_TIED_TO_CONTENTS = """cy.nodes('.holds').filter(p => p.connectedEdges().some(e =>
    bridgescopeBoxes.descendants(p).contains(e.source()) || bridgescopeBoxes.descendants(p).contains(e.target()))).map(p => p.data('label'))"""


def test_bridge_ports_sit_in_the_bridge_box_with_no_edge_to_it(page, lab):
    # The box is the membership: an edge from a port to its own bridge would only cross the
    # labels inside the box.
    ports = "cy.nodes('[?port]').filter(n => bridgescopeBoxes.parent(n).data('kind') === 'bridge' && bridgescopeBoxes.parent(n).data('label') === 'docker0').length"
    assert page.evaluate(ports) >= 2
    assert page.evaluate(BOXES_TIED_TO_CONTENTS) == []
    sh("ip", "-n", lab.host, "link", "add", "bstuiv0", "type", "veth", "peer", "name", "bstuiv1")
    try:  # a port arriving live (a delta) is the same
        sh("ip", "-n", lab.host, "link", "set", "bstuiv0", "master", "docker0", "up")
        wait_js(page, "bridgescopeBoxes.parent(cy.nodes('[label = \"bstuiv0\"]')).data('label') === 'docker0'")
        assert page.evaluate(BOXES_TIED_TO_CONTENTS) == []
    finally:
        sh("ip", "-n", lab.host, "link", "del", "bstuiv0", check=False)


def test_search_export_and_reconnect_indicator(page, lab):
    page.fill("#graph-search", "172.17.0.3")
    wait_js(page, "document.getElementById('search-count').textContent.startsWith('1 found')")
    assert page.evaluate("cy.$('.match').map(e => bridgescopeBoxes.parent(e).data('label'))") == ["c2"]
    with page.expect_download() as dl:
        page.click("#export-png")
    assert dl.value.suggested_filename == "bridgescope-topology.png"
    page.fill("#graph-search", "")


def test_a_resync_flashes_and_moves_nothing_that_did_not_change(page, lab):
    ns_id(page, "c2")
    before = page.evaluate(POSITIONS)
    page.evaluate("window.__flashed = []; void cy.on('class', e => { if (e.target.hasClass('flash')) __flashed.push(e.target.id()); })")
    page.evaluate("bridgescopeResync()")
    wait_js(page, "document.getElementById('graph-status').textContent.includes('namespaces')")  # the graph again
    time.sleep(0.3)
    assert page.evaluate("__flashed") == []  # every element the same as drawn: none "changed"
    assert page.evaluate(POSITIONS) == before
    assert page.evaluate(STICKING_OUT) == []


def test_folding_a_bridge_and_searching_into_the_fold(page, lab):
    c1 = ns_id(page, "c1")
    page.check("#collapse-ns")
    wait_js(page, "cy.nodes('.fold').length === 1")
    assert page.evaluate(f"cy.getElementById({c1!r}).empty()")  # folded away: not drawn at all
    assert page.evaluate("cy.nodes('.fold')[0].data('label')") == "2 containers"
    # search reaches into the fold: Enter opens it, selects the match and opens its panel
    page.fill("#graph-search", "c2")
    page.press("#graph-search", "Enter")
    wait_js(page, "cy.$(':selected').length === 1 && cy.$(':selected').data('label') === 'c2'")
    page.wait_for_selector("#details .details-head h2")
    assert page.inner_text("#details .details-head h2") == f"{lab.host}-c2"
    assert page.evaluate("cy.nodes('.fold').length") == 0
    page.uncheck("#collapse-ns")
    page.fill("#graph-search", "")


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
    # a session the server no longer knows (expired, or a restart): said so, no reload loop;
    # the dashboard's boot page also asks for its stream with that session (session.openEarly)
    for path in ("/audit", "/"):
        expired_session_is_told(browser, server, path, artifacts_dir)


def expired_session_is_told(browser, server, path: str, artifacts_dir) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    tab.goto(f"{server}{path}?token={TOKEN}")
    wait_js(tab, "!!document.getElementById('theme-toggle')")
    # the page's own fetch answers late, so the early stream's 401 comes first: the boot page,
    # not that 401, tells the session has expired (no second load of the tab)
    tab.route(f"{server}{path}", lambda route: (time.sleep(0.4), route.continue_())
              if route.request.resource_type == "fetch" else route.continue_())
    loads: list[str] = []
    tab.on("load", lambda: loads.append("load"))
    # forgotten and reloaded in one task: a poll of the page in between would get its 401 and
    # reload the tab itself, racing this reload
    with tab.expect_navigation():
        tab.evaluate("sessionStorage.setItem('bridgescope-session', 'forgotten-by-the-server'); location.reload()")
    wait_js(tab, "!!document.getElementById('boot') && document.getElementById('boot').dataset.state === 'signed-out'")
    assert "session has expired" in tab.inner_text("#boot")
    time.sleep(1)  # a reload loop would have left this page by now
    assert tab.evaluate("document.getElementById('boot')?.dataset.state") == "signed-out"
    assert loads == ["load"]
    tab.screenshot(path=str(artifacts_dir / "boot-expired.png"))
    context.close()


def test_the_stream_is_asked_for_while_the_page_is_fetched(browser, server):
    """The boot page asks for the dashboard's stream as soon as the tab has its session, so the
    graph is on its way before the page's scripts arrive; the page takes that answer (one
    stream per tab, not two). A page without the graph asks for none."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    asked: list[str] = []
    tab.on("request", lambda r: asked.append(urlparse(r.url).path))
    tab.goto(f"{server}/?token={TOKEN}")
    wait_js(tab, "window.bridgescopeDrawn !== undefined", 120)
    wait_js(tab, "document.getElementById('live').dataset.state === 'live'")
    assert asked.count("/api/events") == 1, asked
    assert asked.index("/api/events") < asked.index("/static/app.js"), asked
    asked.clear()
    tab.goto(f"{server}/audit")
    wait_js(tab, "!!document.getElementById('theme-toggle')")
    assert "/api/events" not in asked, asked
    context.close()
    assert not errors, errors


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
        # the objects concerned wear the badge (its look is part of the graph's stylesheet)
        wait_js(page, "cy.$('.bs-sev-error').length > 0", 10)
        assert page.evaluate("cy.$('.bs-sev-error')[0].style('border-style')") == "double"
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
    """Open an element's panel as a click on it does (Cytoscape's tap event), once it is drawn."""
    wait_js(page, f"{selector_js}.nonempty()")
    # `void`: emit() returns the element, and Playwright would copy its whole object graph
    # (the Cytoscape instance, its caches) back to Python: gigabytes, the renderer's V8 OOM
    page.evaluate(f"void {selector_js}[0].emit('tap')")
    page.wait_for_selector("#details-panel")


def namespace_js(label: str) -> str:
    return f"cy.nodes('[kind = \"namespace\"]').filter(n => [n.data('ns_name'), n.data('label')].includes({label!r}))"


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
    # the other lab is in the snapshot, unrelated to the served host (the tables' toggle shows it)
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
    tap(page, f"cy.edges('[kind = \"masquerade\"]').filter(e => e.source().data('netns') === {ns_id(page, lab.host)!r})")
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


# ---- the picture ------------------------------------------------------------------------------

POSITIONS = """(() => { const out = {}; cy.nodes().forEach(n => { if (!n.hasClass('holds')) out[n.id()] = n.position(); });
    return JSON.stringify(out); })()"""

# Pairs of node boxes that overlap, leaving out a box and what it holds.
OVERLAPS = """(() => {
  const nodes = cy.nodes(':visible').filter(n => n.data('kind') !== 'namespace' || !n.data('is_host'));
  const boxes = nodes.map(n => [n, n.boundingBox({includeLabels: false, includeOverlays: false})]);
  const bad = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, p] = boxes[i], [b, q] = boxes[j];
    if (p.x2 <= q.x1 || q.x2 <= p.x1 || p.y2 <= q.y1 || q.y2 <= p.y1) continue;
    if (bridgescopeBoxes.ancestors(a).contains(b) || bridgescopeBoxes.ancestors(b).contains(a)) continue;
    bad.push([a.id(), b.id()]);
    if (bad.length > 5) return bad;
  }
  return bad; })()"""

# For a failure message: where the page and the server put each of `ids`, and the box's contents.
PLACES = """async (ids) => {
  const served = new Map((await (await window.bridgescopeSession.fetch('/api/graph')).json()).map(e => [e.data.id, e]));
  const box = (n) => n.boundingBox({includeLabels: false, includeOverlays: false});
  return ids.map(id => { const n = cy.getElementById(id);
    return {id, page: n.position(), box: box(n), served: (served.get(id) || {}).position,
            holds: bridgescopeBoxes.children(n).map(c => [c.id(), c.position(), c.style('label')])}; }); }"""

# What sticks out of the box holding it, labels included (pairs of box and member ids): a box is
# sized around what it holds, and again whenever a stylesheet change resizes labels (Present).
STICKING_OUT = """[].concat(...cy.nodes('.holds').map(b => { const o = b.boundingBox({includeLabels: false});
  return bridgescopeBoxes.children(b).filter(n => n.visible()).filter(n => {
    const i = n.boundingBox({includeLabels: true, includeOverlays: false});
    return i.x1 < o.x1 - 0.5 || i.x2 > o.x2 + 0.5 || i.y1 < o.y1 - 0.5 || i.y2 > o.y2 + 0.5; }).map(n => [b.id(), n.id()]); }))"""

# Labels Cytoscape would draw cut (node ids): its label bounds, which size the texture it draws
# the label on, narrower than the text in the font it has now (measured afresh on a canvas).
LABELS_CUT = """(() => { const ctx = document.createElement('canvas').getContext('2d');
  return cy.nodes(':visible').filter(n => n.pstyle('label').strValue && !n.hasClass('holds')).filter(n => {
    ctx.font = `${n.pstyle('font-weight').strValue} ${n.pstyle('font-size').pfValue}px ${n.pstyle('font-family').strValue}`;
    const w = Math.max(...n.pstyle('label').strValue.split('\\n').map(l => ctx.measureText(l).width));
    const b = n.boundingBox({includeNodes: false, includeEdges: false, includeLabels: true, includeOverlays: false});
    return Math.min(w, n.pstyle('text-max-width').pfValue) > b.w + 1; }).map(n => n.id()); })()"""

OUTSIDE_HOST = """(() => { const host = cy.nodes('[kind = "namespace"][?is_host]').boundingBox();
  return cy.nodes('[kind = "namespace"][?container]').filter(n => { const b = n.boundingBox();
    return b.x1 < host.x1 || b.x2 > host.x2 || b.y1 < host.y1 || b.y2 > host.y2; }).map(n => n.id()); })()"""


def open_dashboard(browser, server, width: int, height: int, theme: str | None = None, path: str = "/"):
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    if theme:
        pg.add_init_script(f"try {{ localStorage.setItem('bridgescope-theme', {theme!r}); }} catch (e) {{}}")
    pg.goto(f"{server}{path}{'&' if '?' in path else '?'}token={TOKEN}")
    wait_js(pg, "window.bridgescopeFirstRender !== undefined || (window.cy && cy.nodes().length > 0)", 120)
    time.sleep(0.5)
    return context, pg


def test_positions_are_the_same_after_a_reload_in_another_tab_and_after_tidy(page, browser, server, lab):
    ns_id(page, "c2")
    first = page.evaluate(POSITIONS)
    page.reload()
    wait_js(page, "window.bridgescopeFirstRender !== undefined", 60)
    assert page.evaluate(POSITIONS) == first
    context, other = open_dashboard(browser, server, 1500, 950)  # the page's size: the same folds
    try:
        assert other.evaluate(POSITIONS) == first
    finally:
        context.close()
    page.evaluate(f"void bridgescopeBoxes.children(cy.getElementById({ns_id(page, 'c1')!r})).positions({{x: 5000, y: 5000}})")
    page.click("#tidy")
    wait_js(page, f"{POSITIONS} === {first!r}", 10)


def test_dragging_a_box_takes_what_it_holds_and_a_member_dragged_out_grows_its_box(page):
    c1 = ns_id(page, "c1")
    held = f"Object.fromEntries(bridgescopeBoxes.children(cy.getElementById({c1!r})).map(n => [n.id(), n.position()]))"
    before = page.evaluate(held)
    assert before, "c1's box holds nothing"
    home = page.evaluate(POSITIONS)
    zoom = page.evaluate("cy.zoom()")
    drag(page, free_spot(page, "c1"), 80, 40)
    after = page.evaluate(held)
    assert after.keys() == before.keys()
    for key, p in before.items():  # everything in the box went with it, by the same distance
        assert abs(after[key]["x"] - p["x"] - 80 / zoom) < 2 / zoom and abs(after[key]["y"] - p["y"] - 40 / zoom) < 2 / zoom
    eth0 = page.evaluate(f"bridgescopeBoxes.children(cy.getElementById({c1!r})).filter('[kind = \"veth\"]')[0].id()")
    at = page.evaluate(f"""(() => {{ const r = document.getElementById('topology').getBoundingClientRect();
        const p = cy.getElementById({eth0!r}).renderedPosition(); return [r.left + p.x, r.top + p.y]; }})()""")
    drag(page, tuple(at), 300, 150)  # well out of the box as it was
    inside = f"""(() => {{ const b = cy.getElementById({c1!r}).boundingBox({{includeLabels: false}});
        const e = cy.getElementById({eth0!r}).boundingBox({{includeLabels: false}});
        return e.x1 >= b.x1 && e.x2 <= b.x2 && e.y1 >= b.y1 && e.y2 <= b.y2; }})()"""
    wait_js(page, inside, 5)  # the box grew to hold it
    moved = page.evaluate(f"cy.getElementById({eth0!r}).position().x") - after[eth0]["x"]
    assert abs(moved - 300 / zoom) < 2 / zoom
    page.click("#tidy")  # and all back where the server put it, each in its box
    wait_js(page, f"{POSITIONS} === {home!r} && {inside}", 10)


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_the_lab_at_fit_is_legible_and_tidy(browser, server, lab, artifacts_dir, size):
    context, pg = open_dashboard(browser, server, *size)
    try:
        ns_id(pg, "c2")
        pg.click("#fit")
        time.sleep(0.3)
        assert pg.evaluate(OVERLAPS) == []
        assert pg.evaluate(OUTSIDE_HOST) == []
        assert pg.evaluate(STICKING_OUT) == []
        assert pg.evaluate(LABELS_CUT) == []
        # every label drawn at 11 px or more on screen
        small = pg.evaluate("""cy.nodes(':visible').filter(n => n.data('display'))
            .filter(n => parseFloat(n.style('font-size')) * cy.zoom() < 11).map(n => n.id())""")
        assert small == []
        # no edge inside the host box runs through a label
        crossed = pg.evaluate("""(() => {
          const host = cy.nodes('[kind = "namespace"][?is_host]');
          const inside = bridgescopeBoxes.descendants(host);
          const labelled = inside.filter(n => n.visible() && n.data('display') && !n.hasClass('holds'));
          const hits = [];
          cy.edges(':visible').filter(e => inside.contains(e.source()) && inside.contains(e.target()))
            .forEach(e => { const s = e.sourceEndpoint(), t = e.targetEndpoint();
              labelled.forEach(n => { const b = n.boundingBox({includeNodes: false, includeEdges: false, includeLabels: true});
                for (let k = 0; k <= 40; k++) { const x = s.x + (t.x - s.x) * k / 40, y = s.y + (t.y - s.y) * k / 40;
                  if (x > b.x1 && x < b.x2 && y > b.y1 && y < b.y2) { hits.push([e.id(), n.id()]); break; } } }); });
          return hits; })()""")
        assert crossed == []
        pg.screenshot(path=str(artifacts_dir / f"picture-lab-{size[0]}.png"))
    finally:
        context.close()


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    def lum(css: str) -> float:
        r, g, b = (int(float(v)) / 255 for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])
        f = [(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4) for c in (r, g, b)]
        return 0.2126 * f[0] + 0.7152 * f[1] + 0.0722 * f[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_present_with_the_dark_theme_is_legible_and_whole(browser, server, lab, artifacts_dir, size):
    context, pg = open_dashboard(browser, server, *size, theme="dark", path="/workshop/doctor?present=1")
    try:
        wait_js(pg, "cy.nodes('[kind = \"namespace\"][?is_host]').length === 1", 60)
        time.sleep(0.8)
        colours = pg.evaluate("""(() => { const h = cy.nodes('[kind = "namespace"][?is_host]')[0];
            const c = cy.nodes('[kind = "bridge"]')[0];  // its name is drawn on the host box
            const side = cy.nodes('[kind = "namespace"][!is_host]').filter(n => bridgescopeBoxes.children(n).nonempty())[0];
            return [h.style('color'), h.style('background-color'), c.style('color'), c.style('background-color'),
                    getComputedStyle(document.getElementById('topology')).backgroundColor,
                    bridgescopeBoxes.children(side)[0].style('color'), side.style('background-color')]; })()""")
        host_fg, host_bg, ctr_fg, ctr_bg, page_bg, side_fg, side_bg = colours
        assert contrast(side_fg, side_bg) >= 4.5, colours  # an interface's label in another namespace's box
        assert contrast(host_fg, page_bg) >= 4.5, colours  # the host's name stands on the page
        assert contrast(ctr_fg, host_bg) >= 4.5, colours  # a bridge's name stands on the host box
        assert contrast(ctr_fg, ctr_bg) >= 4.5, colours  # and in its own box
        assert pg.evaluate(STICKING_OUT) == []  # Present's bigger labels: bigger boxes
        assert pg.evaluate(LABELS_CUT) == []  # and measured in Present's font, not the one before
        # the whole graph is on screen
        bb = pg.evaluate("JSON.stringify(cy.elements(':visible').renderedBoundingBox())")
        box = json.loads(bb)
        w, h = pg.evaluate("[cy.width(), cy.height()]")
        assert box["x1"] >= -1 and box["y1"] >= -1 and box["x2"] <= w + 1 and box["y2"] <= h + 1, (box, w, h)
        pg.screenshot(path=str(artifacts_dir / f"present-dark-{size[0]}.png"))
    finally:
        context.close()


def grow(lab, have: int, want: int, stem: str = "uix") -> None:
    """Bare containers on the lab's docker0: a namespace, a veth, an address (as an engine would)."""
    for i in range(have, want):
        ns = f"{RUN_PREFIX}{stem}{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", lab.host, "-batch", "-", input=f"link add {stem[:2]}p{i} type veth peer name eth0 netns {ns}\n"
           f"link set {stem[:2]}p{i} master docker0 up\n")
        sh("ip", "-n", ns, "-batch", "-", input=f"link set lo up\nlink set eth0 up\n"
           f"addr add 172.17.{10 + i // 250}.{1 + i % 250}/16 dev eth0\n")


HELD_VS_SERVED = """async () => {
  const resp = await window.bridgescopeSession.fetch('/api/graph');
  const served = {};
  for (const e of await resp.json()) if (e.group === 'nodes' && !['namespace', 'bridge'].includes(e.data.kind)) served[e.data.id] = e.position;
  const held = window.bridgescopeHeld();
  const ids = new Set([...Object.keys(held), ...Object.keys(served)]);
  const same = (p, q) => p && q && Math.abs(p.x - q.x) < 0.5 && Math.abs(p.y - q.y) < 0.5;
  return [...ids].filter(id => !same(held[id], served[id])).slice(0, 8).map(id => [id, held[id] || null, served[id] || null]); }"""


def test_a_container_with_a_long_name_keeps_to_its_cell(page, lab):
    # Compose names run long ("shop-frontend-webserver-1"): the box wraps the name rather than
    # grow over its bridge port and its neighbours
    stem = "MWshopfrontendwebserver"
    try:
        grow(lab, 0, 2, stem=stem)
        wait_js(page, f"cy.nodes('[label = \"{RUN_PREFIX}{stem}1\"]').length === 1")
        time.sleep(0.5)
        title = page.evaluate(f"""cy.nodes('[label = "{RUN_PREFIX}{stem}1"]').boundingBox(
            {{includeNodes: false, includeEdges: false, includeLabels: true, includeOverlays: false}}).w""")
        assert 0 < title <= 180  # wrapped within its cell (220 wide), not one line over its neighbours
        assert page.evaluate(OVERLAPS) == []
        assert page.evaluate(OUTSIDE_HOST) == []
    finally:
        for i in range(2):
            sh("ip", "netns", "del", f"{RUN_PREFIX}{stem}{i}", check=False)


def test_a_page_open_through_a_burst_holds_what_a_reload_would_draw(browser, server, lab):
    # The page lives on deltas while containers arrive by the hundred, most into a folded
    # bridge: once the kernel is quiet it must hold what a fresh page gets, every node in place.
    context, pg = open_dashboard(browser, server, 1366, 768)
    try:
        grow(lab, 0, 300, stem="burst")
        deadline, apart = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            apart = pg.evaluate(HELD_VS_SERVED)
            if not apart:
                break
            time.sleep(1)
        assert apart == []
    finally:
        context.close()
        for i in range(300):
            sh("ip", "netns", "del", f"{RUN_PREFIX}burst{i}", check=False)


def test_many_containers_fold_stay_apart_and_search_finds_one(browser, server, lab, artifacts_dir):
    have = 0
    try:
        for total in (60, 500):
            grow(lab, have, total - 2)
            have = total - 2
            for size in ((1366, 768), (1920, 1080)):
                context, pg = open_dashboard(browser, server, *size)
                try:
                    wait_js(pg, f"document.getElementById('graph-status').textContent.startsWith('{total + 3} namespaces')", 120)
                    assert pg.evaluate("cy.nodes('.fold').length") == 1  # too many to read: folded
                    assert pg.evaluate(OVERLAPS) == []
                    pg.screenshot(path=str(artifacts_dir / f"picture-{total}-folded-{size[0]}.png"))
                    pg.click("#graph-search")
                    pg.keyboard.type(f"uix{total - 10}")
                    pg.keyboard.press("Enter")
                    wait_js(pg, f"cy.$(':selected').length === 1 && cy.$(':selected').data('label') === '{RUN_PREFIX}uix{total - 10}'")
                    pg.wait_for_selector("#details .details-head h2")
                    wait_js(pg, "!cy.animated()")  # where the zoom ends, not a frame of the way there
                    assert pg.evaluate("cy.zoom()") <= 1.31  # readable, never absurdly close
                    bad = pg.evaluate(OVERLAPS)  # expanded: still apart
                    assert bad == [], pg.evaluate(PLACES, [x for pair in bad for x in pair])
                    assert pg.evaluate(OUTSIDE_HOST) == []
                    pg.screenshot(path=str(artifacts_dir / f"picture-{total}-search-{size[0]}.png"))
                finally:
                    context.close()
    finally:
        for i in range(have):
            sh("ip", "netns", "del", f"{RUN_PREFIX}uix{i}", check=False)
