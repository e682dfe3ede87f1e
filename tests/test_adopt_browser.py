"""Adopt through the dashboard, in Debian's Chromium: a real dockerd confined to a throwaway
namespace (tests/engines.py), `bridgescope serve --netns` that namespace with its
`--engine-socket`, and the Docker container's panel adding a port forward that a client
namespace then reaches; removed through the same panel, the port is refused again."""
from __future__ import annotations

import os
import secrets

import pytest
import serve_process
from conftest import RUN_PREFIX
from engines import DOCKERD, PAGE, confined, fetch, start_docker, wait_for
from test_browser_dashboard import CSP_WATCH, click_namespace, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.engines, pytest.mark.slow]

TOKEN = "adopt-browser-token"


def reaches(host, port: int) -> bool:
    return fetch(host.client, host.url(port), timeout=2) == PAGE


@pytest.fixture(scope="module")
def docker(tmp_path_factory, engines_confined):
    if not os.path.exists(DOCKERD):
        pytest.skip("docker.io is not installed (make deps installs it)")
    host = start_docker(tmp_path_factory.mktemp("adopt-ui"), secrets.token_hex(2), "nft")
    host.web = f"{RUN_PREFIX}-uiweb"
    host.run_web(host.web)
    wait_for(lambda: reaches(host, 8080), "the container's page")
    yield from confined(host)


@pytest.fixture(scope="module")
def server(docker, tmp_path_factory):
    state = tmp_path_factory.mktemp("adopt-ui-state")
    args = ("--engine-socket", docker.socket, "--audit-log", str(state / "audit.jsonl"))
    with serve_process.serving(docker.ns, TOKEN, state, state / "serve.log", args=args) as base:
        yield base


@pytest.fixture(scope="module")
def page(server, artifacts_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        context = browser.new_context(viewport={"width": 1500, "height": 950})
        context.add_init_script(CSP_WATCH)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text)
              if m.type == "error" and "status of 422" not in m.text else None)
        pg.goto(f"{server}/?token={TOKEN}")
        wait_js(pg, "!!(window.cy && window.cy.nodes && window.cy.nodes().length > 0)", 120)
        try:
            yield pg
        finally:
            pg.screenshot(path=str(artifacts_dir / "adopt-docker-panel.png"))
            browser.close()
        assert not errors, errors  # no CSP violation, no script error, no failed request


def test_a_forward_added_and_removed_through_a_docker_containers_panel(page, docker):
    assert not reaches(docker, 9090)
    click_namespace(page, docker.web)  # Docker's name for it, from the engine socket
    page.wait_for_selector("#details .details-head h2", timeout=20000)
    form = page.locator("#p-forward-form")
    assert form.get_by_label("Container", exact=True).input_value() == docker.web
    form.get_by_label("Host port").fill("9090")
    form.get_by_label("Container port").fill("80")
    form.get_by_role("button", name="Add port forward").click()
    page.wait_for_selector("#p-forward-form .outcome.applied", timeout=30000)
    assert "DOCKER-USER" in page.inner_text("#p-forward-form .outcome")
    wait_for(lambda: reaches(docker, 9090), "the forward added in the browser")
    assert reaches(docker, 8080)  # Docker's own published port still works

    page.locator("#p-forward-form").get_by_role("button", name="Remove port forward").click()
    page.locator("#p-forward-form").get_by_role("button", name="Confirm removal").click()
    page.wait_for_selector("#p-forward-form .outcome.applied", timeout=30000)
    wait_for(lambda: not reaches(docker, 9090), "the port refused again")
    assert reaches(docker, 8080)
