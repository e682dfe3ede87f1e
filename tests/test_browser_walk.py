"""The workshop in a real browser: the whole guided walk (every step, the blog's wrong turn,
the doctor's badge, the fix), the packet path with a probe, the projector and attendee views,
and a reset - against a real `bridgescope serve` and a real walk lab."""
from __future__ import annotations

import os
import secrets

import pytest
import serve_process

from bridgescope.plumbing import netns
from bridgescope.plumbing.lab import walklab
from bridgescope.plumbing.lab.walk import steps
from bridgescope.plumbing.lab.walklab import WalkLab

pytestmark = [pytest.mark.browser, pytest.mark.kernel]

TOKEN = "walk-test-token"


@pytest.fixture
def served_walk(run_prefix, tmp_path, monkeypatch):
    """A walk lab (bare host) and a dashboard serving it, both removed afterwards."""
    lab = WalkLab(f"{run_prefix}b{secrets.token_hex(1)}")
    env = {**os.environ, "BRIDGESCOPE_WALK_PREFIX": lab.names.prefix,
           "BRIDGESCOPE_STATE_DIR": str(tmp_path)}
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))  # this process reads the same progress
    proc = None
    try:
        lab.up()
        port = serve_process.free_port()
        proc = serve_process.start(lab.names.host, port, env={**env, "BRIDGESCOPE_TOKEN": TOKEN})
        base = f"http://127.0.0.1:{port}"
        serve_process.wait_until_answering(proc, base + "/workshop/walk",
                                           headers={"Authorization": f"Bearer {TOKEN}"})
        yield base, lab
    finally:
        if proc is not None:
            serve_process.stop(proc)
        lab.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(lab.names.prefix)]


CSP_WATCH = ("document.addEventListener('securitypolicyviolation', (e) => console.error("
             "'CSP violation: ' + e.violatedDirective + ' ' + e.sourceFile + ':' + e.lineNumber));")


def badged(page, severity: str) -> list[str]:
    return page.evaluate(f"() => window.cy ? window.cy.elements('.ws-sev-{severity}').map(e => e.data('label')) : []")


def wait_badge(page, label: str, severity: str = "error") -> None:
    page.wait_for_function(
        f"() => window.cy && window.cy.elements('.ws-sev-{severity}').some(e => e.data('label') === '{label}')",
        timeout=15000)


def shoot(page, path) -> None:
    # clicks may have scrolled the (overflow: hidden) page body; the app never does
    page.evaluate("() => { document.scrollingElement.scrollTop = 0; document.body.scrollTop = 0; }")
    page.screenshot(path=str(path))


def run_step(page, key: str) -> None:
    page.click(f"#do-{key}")
    page.wait_for_selector(f"#step-{key}[data-status=done]", timeout=20000)


def test_the_walk_end_to_end(served_walk, browser, artifacts_dir):
    base, lab = served_walk
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text else None)
    page.add_init_script(CSP_WATCH)
    page.goto(base + f"/workshop/walk?token={TOKEN}")  # each browser.new_page is a new profile
    page.wait_for_selector(".ws-step")  # the boot page fetched the real one with the session
    assert "token=" not in page.url
    keys = [s.key for s in steps(lab.names)]
    assert page.locator(".ws-step").count() == len(keys)
    assert f"host: {lab.names.host}" in page.inner_text(".topbar-tools")  # the lab's host, not the dashboard's
    assert page.inner_text("#ws-progress").startswith(f"Step 1 of {len(keys)}")

    page.wait_for_selector("[data-ready='1']")  # the walk's script has bound its keys
    page.keyboard.press("n")  # the instructor's key for "run the step due"
    page.wait_for_selector("#step-bridge[data-status=done]", timeout=20000)
    assert page.inner_text("#ws-progress").startswith(f"Step 2 of {len(keys)}")
    run_step(page, "gateway")
    # the bridge is down until the step that brings it up: not built yet, not an error
    assert "link-down" in page.inner_text("#ws-later")
    assert "link-down" not in page.inner_text("#ws-doctor").split("Not built yet")[0]
    for key in keys[2:keys.index("address")]:
        run_step(page, key)
    for width, height in ((1366, 768), (1920, 1080)):
        page.set_viewport_size({"width": width, "height": height})
        shoot(page, artifacts_dir / f"walk-{width}.png")
    page.set_viewport_size({"width": 1600, "height": 1000})
    with page.expect_download() as dl:
        page.click("#ws-handout")
    assert dl.value.suggested_filename == "docker-run-p-walk.md"
    with open(dl.value.path()) as handout:
        assert handout.read().count("\n## ") == len(keys)
    # the graph grew live: the container's end of the cable is there
    page.wait_for_function("() => window.cy && window.cy.nodes().some(n => n.data('label') === 'vethweb0')",
                           timeout=60000)

    # the blog's wrong turn: the address without prefix; the doctor names it, the graph badges eth0
    page.click("#wrong-address")
    page.wait_for_selector("#step-address[data-status=wrong]")
    assert "addr-no-prefix" in page.inner_text("#ws-doctor")
    wait_badge(page, "eth0")
    page.click("#do-route")  # and the next step fails the way the blog's did
    page.wait_for_selector("#step-route[data-status=failed]")
    assert "Nexthop has invalid gateway" in page.inner_text(".ws-last")
    assert "Nexthop has invalid gateway" in page.inner_text("#step-route")  # said at the step
    shoot(page, artifacts_dir / "walk-wrong-turn.png")

    doctor = browser.new_page(viewport={"width": 1600, "height": 1000})
    doctor.goto(base + f"/workshop/doctor?lab=1&token={TOKEN}")
    doctor.wait_for_selector(".ws-finding")
    assert "addr-no-prefix" in doctor.inner_text("#ws-findings")
    wait_badge(doctor, "eth0")
    shoot(doctor, artifacts_dir / "doctor.png")

    page.click("#fix-address")
    page.wait_for_selector("#step-address[data-status=done]")
    # the doctor page follows by itself: the finding goes without a reload
    doctor.wait_for_function("() => !document.getElementById('ws-findings').innerText.includes('addr-no-prefix')",
                             timeout=15000)
    for key in keys[keys.index("route"):]:
        run_step(page, key)
    page.wait_for_selector("#ws-done")
    assert "The doctor finds nothing to complain about." in page.inner_text("#ws-doctor")
    page.wait_for_function("() => window.cy && window.cy.nodes().some(n => (n.data('label') || '').startsWith('tcp *:8080'))",
                           timeout=15000)
    assert badged(page, "error") == []

    # packet path from the client to the published port, with a real probe
    page.select_option("#ws-src", "client")
    page.select_option("#ws-dst", "0")
    page.check("#ws-probe")
    page.click("#ws-trace")
    page.wait_for_selector("#ws-path-result .ws-probe")
    result = page.inner_text("#ws-path-result")
    assert f"DNAT {walklab.HOST_UPLINK}:8080 -> 172.17.0.2:80" in result
    assert 'Probe answered: "web saw 198.51.100.2"' in result
    assert "--to-destination 172.17.0.2:80" in page.inner_text(".ws-moved")
    highlighted = page.evaluate("() => window.cy.nodes('.ws-path').map(n => n.data('label'))")
    assert {"uplink", "docker0", "vethweb0", "eth0"} <= set(highlighted)
    assert lab.names.host not in highlighted  # namespaces are not lit up whole
    shoot(page, artifacts_dir / "walk-done-packet-path.png")

    # the projector view, and the attendees' read-only follow view
    page.click("#ws-present-toggle")
    assert "ws-present" in page.get_attribute("body", "class")
    assert "present=1" in page.url
    shoot(page, artifacts_dir / "walk-present.png")
    attendee = browser.new_page(viewport={"width": 1280, "height": 800})
    attendee.goto(base + f"/workshop/walk?follow=1&token={TOKEN}")
    attendee.wait_for_selector(".ws-step")
    assert attendee.locator("[data-ws-post]").count() == 0
    assert attendee.locator(".ws-step[data-status=done]").count() == len(keys)
    # the attendees see the instructor's picture: the same nodes at the same places
    where = """JSON.stringify(Object.fromEntries(window.cy.nodes().filter(n => !n.hasClass('holds'))
        .map(n => [n.id(), n.position()]).sort()))"""
    attendee.wait_for_function("() => window.cy && window.cy.nodes().some(n => n.data('label') === 'vethweb0')",
                               timeout=30000)
    assert attendee.evaluate(where) == page.evaluate(where)

    # reset at the end: asked first (No changes nothing), then both pages start over
    page.once("dialog", lambda d: d.dismiss())
    page.click("#ws-reset")
    page.wait_for_timeout(500)
    assert page.locator(".ws-step[data-status=done]").count() == len(keys)
    page.once("dialog", lambda d: d.accept())
    page.click("#ws-reset")
    page.wait_for_selector("#do-bridge")
    attendee.wait_for_selector(".ws-step.ws-current#step-bridge", timeout=10000)
    page.wait_for_function("() => !window.cy.nodes().some(n => n.data('label') === 'vethweb0')",
                           timeout=15000)
    assert not netns.exists(lab.names.container)
    assert errors == []


def test_packet_path_after_the_dnat_without_a_jump_is_red_and_agrees_with_the_probe(served_walk, browser,
                                                                                   artifacts_dir):
    """The blog's DNAT without a jump: the path must not say "Delivered" while the real
    connection is refused; ticking the probe shows the probe's verdict, hops after it grey."""
    base, lab = served_walk
    errors: list[str] = []
    keys = [s.key for s in steps(lab.names)]
    for key in keys[:keys.index("publish")]:
        assert lab.apply(key).ok, key
    assert lab.wrong_turn("publish").ok
    for size, name in (((1366, 768), "walk-path-refused-1366.png"), ((1920, 1080), "walk-path-refused-1920.png")):
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(base + f"/workshop/walk?token={TOKEN}")
        page.wait_for_selector(".ws-step")
        page.select_option("#ws-src", "client")
        page.select_option("#ws-dst", "0")
        page.click("#ws-trace")
        page.wait_for_selector("#ws-path-result .ws-verdict")
        verdict = page.locator("#ws-path-result .ws-verdict")
        assert verdict.get_attribute("data-outcome") == "refused"
        assert f"refused: nothing listens on tcp/8080 in {lab.names.host}" in verdict.inner_text()
        assert "Delivered" not in page.inner_text("#ws-path-result")
        assert page.locator(".ws-hop.hop-refused").count() == 1
        page.check("#ws-probe")
        page.click("#ws-trace")
        page.wait_for_selector("#ws-path-result .ws-probe")
        verdict = page.locator("#ws-path-result .ws-verdict")
        assert verdict.get_attribute("data-outcome") == "refused"  # the probe's, and the same
        assert "Connection refused" in verdict.inner_text()
        page.locator("#ws-path-result").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / name))
        page.close()
    assert errors == []
