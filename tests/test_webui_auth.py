"""Who may use the dashboard: sessions bound to the origin, the token, CSRF, Origin and Host
checks, read-only, security headers, audited refusals; and the cookie attack against a real
`bridgescope serve`.

Every route in the app's URL map is probed, so a blueprint added later (the workshop) is
covered by the same rules without touching this file.
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
from pathlib import Path

import pytest
import requests
import serve_process
from conftest import RUN_PREFIX, delete_netns, sh
from webui_sources import StaticSource, sample_snapshot

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui import auth
from bridgescope.webui.app import create_app
from bridgescope.webui.audit import RefusalBudget
from bridgescope.webui.cli_serve import app_config, banner, warnings

TOKEN = "s3cret-token"
BASE = "http://127.0.0.1:8470"
SAMPLE_ARGS = {"element_id": "ns-1001", "name": "x", "kind": "forward", "filename": "app.js"}
SESSION = "X-Bridgescope-Session"
LOGIN = "/auth/session"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# The only cookie the dashboard ever set held the access token; a page on another local port
# received it. Whatever a cookie could carry must be useless now.
OLD_COOKIE = "bridgescope_token_8470"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))


def make_app(**config):
    return create_app({"SOURCE": StaticSource(sample_snapshot()), "TOKEN": TOKEN, **config})


def routes(app, methods=("GET", "POST", "PUT", "PATCH", "DELETE")):
    """(method, url) for every rule of the app, with sample path arguments filled in."""
    out = []
    for rule in app.url_map.iter_rules():
        url = rule.rule
        for arg in rule.arguments:
            url = re.sub(rf"<(?:[^:>]+:)?{arg}>", SAMPLE_ARGS.get(arg, "x"), url)
        out += [(m, url) for m in sorted(rule.methods & set(methods))]
    return out


def login(client) -> dict[str, str]:
    """A tab's headers after it traded the token for a session: the session and our Origin."""
    resp = client.post(LOGIN, base_url=BASE, headers={**BEARER, "Origin": BASE})
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    return {SESSION: resp.get_json()["session"], "Origin": BASE}


def authed(app):
    """A test client that behaves like a signed-in tab."""
    client = app.test_client()
    headers = login(client)
    client.environ_base.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    return client


def csrf_of(client) -> str:
    return client.get("/api/session", base_url=BASE).get_json()["csrf_token"]


def is_boot_page(resp) -> bool:
    html = resp.get_data(as_text=True)
    return resp.status_code == 200 and 'id="boot"' in html and "boot.js" in html


def test_every_route_refuses_a_request_without_credentials():
    app = make_app()
    client = app.test_client()
    probed = routes(app)
    assert ("GET", "/api/events") in probed and ("GET", "/static/app.js") in probed
    for method, url in probed:
        resp = client.open(url, method=method, base_url=BASE)
        if url.startswith("/static/"):
            assert resp.status_code == 200, url  # public files, no secret in them
        elif method == "GET" and not url.startswith("/api/"):
            # a navigation cannot carry the header: the generic boot page, nothing else
            assert is_boot_page(resp), (method, url, resp.status_code)
            html = resp.get_data(as_text=True)
            assert "csrf" not in html.lower() and "web" not in html and "ns-" not in html, url
        else:
            assert resp.status_code == 401, (method, url, resp.status_code)


def test_the_token_buys_a_session_and_no_cookie_is_ever_set():
    app = make_app()
    client = app.test_client()
    headers = login(client)
    assert len(headers[SESSION]) >= 32 and headers[SESSION] != TOKEN
    for url in ("/", "/tables/", "/audit", "/api/session", "/api/graph", "/details/ns-2002"):
        resp = client.get(url, base_url=BASE, headers=headers)
        assert resp.status_code == 200 and not is_boot_page(resp), url
        assert "Set-Cookie" not in resp.headers, url
    page = client.get("/", base_url=BASE, headers=headers).get_data(as_text=True)
    assert "session.js" in page and csrf_of_page(page) == client.get(
        "/api/session", base_url=BASE, headers=headers).get_json()["csrf_token"]
    # the token in the URL buys nothing: only boot.js reads it, and sends it once, in a header
    assert is_boot_page(client.get(f"/?token={TOKEN}", base_url=BASE))
    assert client.get(f"/api/graph?token={TOKEN}", base_url=BASE).status_code == 401


def csrf_of_page(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]*)"', html).group(1)


def test_a_wrong_token_or_an_unknown_session_is_refused():
    client = make_app().test_client()
    wrong = client.post(LOGIN, base_url=BASE, headers={"Authorization": "Bearer nope", "Origin": BASE})
    assert wrong.status_code == 401 and "session" not in wrong.get_json()
    assert client.post(LOGIN, base_url=BASE, headers={"Origin": BASE}).status_code == 401
    assert client.get("/", base_url=BASE, headers={"Authorization": "Bearer nope"}).status_code == 401
    # a stale session is told so (401), not handed the boot page again: no reload loop
    assert client.get("/", base_url=BASE, headers={SESSION: "forged"}).status_code == 401
    assert client.get("/api/graph", base_url=BASE, headers={SESSION: "forged"}).status_code == 401


def test_a_cookie_carries_nothing_usable():
    app = make_app()
    client = app.test_client()
    login(client)  # a tab signed in: whatever the server set, a cookie jar would now hold
    client.set_cookie(OLD_COOKIE, TOKEN, domain="127.0.0.1")
    assert client.get("/api/session", base_url=BASE).status_code == 401
    assert "csrf_token" not in client.get("/api/session", base_url=BASE).get_data(as_text=True)
    assert client.get("/api/graph", base_url=BASE).status_code == 401
    assert client.get("/api/events", base_url=BASE).status_code == 401
    assert is_boot_page(client.get("/", base_url=BASE))
    assert client.post("/api/forwards", base_url=BASE, json={"container": "c", "spec": "1:1"}).status_code == 401


def test_each_session_has_its_own_csrf_token():
    app = make_app()
    a, b = authed(app), authed(app)
    csrf_a, csrf_b = csrf_of(a), csrf_of(b)
    assert csrf_a != csrf_b and app.extensions["bridgescope_access"].csrf not in (csrf_a, csrf_b)
    data = {"csrf_token": csrf_a, "container": "", "host_port": "1", "container_port": "1"}
    assert b.post("/forms/preview/forward", base_url=BASE, data=data).status_code == 403
    assert a.post("/forms/preview/forward", base_url=BASE, data=data).status_code == 200


def test_bearer_token_works_for_scripts():
    client = make_app().test_client()
    resp = client.get("/api/topology", base_url=BASE, headers=BEARER)
    assert resp.status_code == 200
    assert {n["name"] for n in resp.get_json()["namespaces"]} == {"host", "web"}
    csrf = client.get("/api/session", base_url=BASE, headers=BEARER).get_json()["csrf_token"]
    # a script sends neither Origin nor Sec-Fetch-*; its token and CSRF token suffice
    resp = client.post("/forms/preview/forward", base_url=BASE, headers=BEARER,
                       data={"csrf_token": csrf, "container": "", "host_port": "1", "container_port": "1"})
    assert resp.status_code == 200


def test_no_token_configured_means_a_random_one_not_no_auth():
    app = create_app({"SOURCE": StaticSource(sample_snapshot())})
    assert is_boot_page(app.test_client().get("/", base_url=BASE))
    assert app.test_client().get("/api/graph", base_url=BASE).status_code == 401
    open_app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True})
    resp = open_app.test_client().get("/", base_url=BASE)
    assert resp.status_code == 200 and not is_boot_page(resp)
    # a session left in the tab by an earlier run on this port does not lock it out
    stale = open_app.test_client().get("/api/graph", base_url=BASE, headers={SESSION: "old"})
    assert stale.status_code == 200


@pytest.mark.parametrize("host_header", ["evil.example:8470", "evil.example", "127.0.0.1:9999",
                                         "192.0.2.7:8470", "localhost.evil.example:8470", ":8470"])
def test_host_header_must_name_the_listen_address(host_header):
    client = authed(make_app())
    resp = client.get("/", base_url=BASE, headers={"Host": host_header})
    assert resp.status_code == 403
    assert b"not the address this dashboard listens on" in resp.data


@pytest.mark.parametrize("listen,header,ok", [
    ("127.0.0.1:8470", "127.0.0.1:8470", True),
    ("127.0.0.1:8470", "localhost:8470", True),
    ("127.0.0.1:8470", "[::1]:8470", True),
    ("127.0.0.1:8470", "rebound.example:8470", False),
    ("0.0.0.0:8470", "198.51.100.9:8470", True),
    ("0.0.0.0:8470", "localhost:8470", False),
    ("0.0.0.0:8470", "dashboard.example:8470", False),
    ("192.0.2.5:80", "192.0.2.5", True),
    ("192.0.2.5:80", "192.0.2.6", False),
    ("[::]:8470", "[2001:db8::1]:8470", True),
    ("127.0.0.1:8470", "127.0.0.1:٨٤٧٠", False),  # digits, but not ASCII ones
    ("127.0.0.1:8470", "127.0.0.1:²", False),
    ("127.0.0.1:8470", "127.0.0.1:000000000000008470", False),
])
def test_host_allowed(listen, header, ok):
    host, port = auth.parse_listen(listen)
    assert auth.host_allowed(header, auth.AccessPolicy("t", "c", host, port)) is ok


def test_an_explicitly_allowed_name_passes_the_host_check():
    client = make_app(ALLOWED_HOSTS=("dash.example",)).test_client()
    assert client.get("/api/graph", base_url="http://dash.example:8470", headers=BEARER).status_code == 200
    assert client.get("/api/graph", base_url="http://other.example:8470", headers=BEARER).status_code == 403


def test_every_mutation_needs_the_csrf_token():
    app = make_app()
    client = authed(app)
    mutations = routes(app, ("POST", "PUT", "PATCH", "DELETE"))
    assert len(mutations) >= 8
    for method, url in mutations:
        if url == LOGIN:
            continue  # the token itself is the proof there
        missing = client.open(url, method=method, base_url=BASE, data={"name": "x"})
        wrong = client.open(url, method=method, base_url=BASE, headers={"X-CSRF-Token": "nope"})
        assert missing.status_code == 403 and b"CSRF" in missing.data, (method, url)
        assert wrong.status_code == 403, (method, url)


@pytest.mark.parametrize("headers,allowed", [
    ({"Origin": BASE}, True),
    ({"Origin": BASE, "Sec-Fetch-Site": "same-origin"}, True),
    ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Origin": "http://127.0.0.1:18493"}, False),  # another local port: another origin
    ({"Origin": "https://127.0.0.1:8470"}, False),
    ({"Origin": "http://localhost:8470"}, False),  # not the name this request was sent to
    ({"Origin": "http://evil.example"}, False),
    ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, False),
    ({"Origin": "null"}, False),
    ({"Origin": BASE, "Sec-Fetch-Site": "same-site"}, False),
    ({}, False),  # a browser tab always names where it comes from
])
def test_changes_need_our_own_origin(headers, allowed):
    app = make_app()
    client = app.test_client()
    session = login(client)[SESSION]
    csrf = client.get("/api/session", base_url=BASE, headers={SESSION: session}).get_json()["csrf_token"]
    resp = client.post("/forms/preview/forward", base_url=BASE, headers={SESSION: session, **headers},
                       data={"csrf_token": csrf, "container": "", "host_port": "1", "container_port": "1"})
    assert (resp.status_code == 200) is allowed, resp.get_data(as_text=True)
    if not allowed:
        assert resp.status_code == 403 and b"Cross-site request refused" in resp.data


def test_a_foreign_origin_cannot_open_a_session_even_with_the_token():
    client = make_app().test_client()
    resp = client.post(LOGIN, base_url=BASE, headers={**BEARER, "Origin": "http://127.0.0.1:18493"})
    assert resp.status_code == 403 and "session" not in resp.get_json()


@pytest.mark.parametrize("origin,scheme,host,same", [
    ("http://127.0.0.1:8470", "http", "127.0.0.1:8470", True),
    ("HTTP://127.0.0.1:8470", "http", "127.0.0.1:8470", True),
    ("http://127.0.0.1", "http", "127.0.0.1:80", True),
    ("http://[::1]:8470", "http", "[::1]:8470", True),
    ("http://127.0.0.1:8471", "http", "127.0.0.1:8470", False),
    ("http://127.0.0.1:8470/x", "http", "127.0.0.1:8470", False),
    ("ftp://127.0.0.1:8470", "http", "127.0.0.1:8470", False),
    ("127.0.0.1:8470", "http", "127.0.0.1:8470", False),
    ("http://127.0.0.1:²", "http", "127.0.0.1:8470", False),
    ("http://127.0.0.1:٨٤٧٠", "http", "127.0.0.1:8470", False),
])
def test_same_origin(origin, scheme, host, same):
    assert auth.same_origin(origin, scheme, host) is same


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_refusals_are_audited_and_a_flood_costs_a_few_lines(tmp_path):
    log = tmp_path / "audit.jsonl"
    app = make_app(AUDIT_LOG=str(log))
    client = app.test_client()
    for _ in range(200):
        client.get("/api/graph", base_url=BASE, headers={SESSION: "forged"})
    session = login(client)[SESSION]
    client.post("/api/forwards", base_url=BASE, headers={SESSION: session, "Origin": "http://127.0.0.1:18493"})
    client.post("/api/forwards", base_url=BASE, headers={SESSION: session, "Origin": BASE})
    client.post(LOGIN, base_url=BASE, headers={"Authorization": "Bearer nope", "Origin": BASE})
    client.get("/", base_url=BASE, headers={"Host": "rebound.example:8470"})
    results = [e["result"] for e in audit_lines(log)]
    flood = RefusalBudget().per_window
    assert results == ["refused: unknown or expired session"] * flood + [
                       "refused: origin: foreign Origin 'http://127.0.0.1:18493'",
                       "refused: CSRF token", "refused: wrong access token", "refused: Host header"]
    entries = audit_lines(log)
    assert all(e["ok"] is False and e["commands"] == [] for e in entries)
    assert entries[0]["request"] == {"method": "GET", "path": "/api/graph"}
    assert entries[flood]["request"]["origin"] == "http://127.0.0.1:18493"
    assert TOKEN not in log.read_text() and session not in log.read_text()
    # the audit page shows them
    assert "refused: CSRF token" in authed(app).get("/audit", base_url=BASE).get_data(as_text=True)


def test_suppressed_refusals_are_counted_in_the_next_line():
    now = [0.0]
    budget = RefusalBudget(per_window=1, window=60, clock=lambda: now[0])
    assert budget.admit("c", "CSRF token") == 0
    assert [budget.admit("c", "CSRF token") for _ in range(5)] == [None] * 5
    assert budget.admit("other", "CSRF token") == 0 and budget.admit("c", "origin") == 0
    now[0] = 61
    assert budget.admit("c", "CSRF token") == 5
    small = RefusalBudget(window=60, max_keys=2, clock=lambda: now[0])
    assert small.admit("a", "r") == 0 and small.admit("b", "r") == 0
    assert small.admit("c", "r") is None  # bounded memory, bounded log


def test_sessions_expire_when_idle_and_are_capped():
    now = [0.0]
    sessions = auth.Sessions(idle=100, cap=3, clock=lambda: now[0])
    a = sessions.open()
    csrf = sessions.csrf_of(a)
    now[0] = 90
    assert sessions.csrf_of(a) == csrf  # used: the idle clock starts again
    now[0] = 180
    assert sessions.csrf_of(a) == csrf
    now[0] = 281
    assert sessions.csrf_of(a) is None
    b, c, d = sessions.open(), sessions.open(), sessions.open()
    sessions.csrf_of(b)
    e = sessions.open()  # over the cap: the least recently used (c) goes
    assert sessions.csrf_of(c) is None and all(sessions.csrf_of(s) for s in (b, d, e))
    assert len(sessions) == 3


def test_a_live_view_ends_when_its_session_does():
    app = make_app(HEARTBEAT=0.05)
    client = app.test_client()
    headers = login(client)
    resp = client.get("/api/events", base_url=BASE, headers=headers, buffered=False)
    chunks = iter(resp.response)
    assert next(chunks).startswith(b": hello") and b"event: graph" in next(chunks)
    assert next(chunks).startswith(b": keepalive")
    app.extensions["bridgescope_access"].sessions._by_id.clear()  # expired, or dropped
    assert list(chunks) == []
    resp.close()


def test_read_only_refuses_every_mutation_and_shows_no_forms():
    app = make_app(READ_ONLY=True)
    client = authed(app)  # signing in is not a change: read-only dashboards have it too
    csrf = csrf_of(client)
    # changing what is shown is not a change: the one exemption, named so another is deliberate
    shown_only = {rule.rule for rule in app.url_map.iter_rules()
                  if getattr(app.view_functions[rule.endpoint], "view_only", False)}
    assert shown_only == {"/api/fleet/open"}
    for method, url in routes(app, ("POST", "PUT", "PATCH", "DELETE")):
        if url == LOGIN or url in shown_only:
            continue
        resp = client.open(url, method=method, base_url=BASE, headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 403 and b"read-only" in resp.data, (method, url)
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "Add port forward" not in page and "<form" not in page and "read-only" in page
    assert "Add port forward" not in client.get("/details/ns-2002", base_url=BASE).get_data(as_text=True)


def test_pages_carry_a_strict_csp_and_no_inline_script_or_style():
    app = make_app()
    client = authed(app)
    pages = [(url, client.get(url, base_url=BASE)) for url in
             ("/", "/tables/", "/audit", "/forms/", "/details/ns-2002", "/details/pf:ns-1001:tcp:*:8080")]
    pages.append(("boot", app.test_client().get("/", base_url=BASE)))
    for url, resp in pages:
        assert resp.status_code == 200, url
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        html = resp.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), url  # every script is a file
        assert not re.search(r"\sstyle=", html), url
        assert not re.search(r"<style", html), url
        assert not re.search(r"\son[a-z]+=", html), url


def test_read_token_sources(tmp_path):
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert auth.read_token(str(f), {"BRIDGESCOPE_TOKEN": "from-env"}) == "from-file"
    assert auth.read_token(None, {"BRIDGESCOPE_TOKEN": "from-env"}) == "from-env"
    assert len(auth.read_token(None, {})) >= 24
    with pytest.raises(BridgescopeError, match="cannot read the token file"):
        auth.read_token(str(tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(BridgescopeError, match="is empty"):
        auth.read_token(str(tmp_path / "empty"), {})


@pytest.mark.parametrize("listen", ["8470", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999",
                                    "dash.example:8470", "127.0.0.1:http", "127.0.0.1:²",
                                    "127.0.0.1:٨٤٧٠", "127.0.0.1:0000000000000000008470"])
def test_bad_listen_addresses_are_refused(listen):
    with pytest.raises(BridgescopeError, match="--listen"):
        auth.parse_listen(listen)


def _args(**kw):
    base = dict(listen="127.0.0.1:8470", read_only=False, netns=None, token_file=None, no_auth=False,
                allow_host=[], audit_log=None, firewall="auto", threads=96)
    return argparse.Namespace(**{**base, **kw})


def test_serve_config_banner_and_warnings(tmp_path):
    cfg = app_config(_args(), {"BRIDGESCOPE_TOKEN": "tok/en"})
    assert cfg["TOKEN"] == "tok/en" and cfg["NO_AUTH"] is False
    assert "http://127.0.0.1:8470/?token=tok%2Fen" in banner(cfg)
    assert warnings(cfg) == []
    wide = app_config(_args(listen="0.0.0.0:8470"), {})
    assert any("beyond localhost" in w for w in warnings(wide))
    open_cfg = app_config(_args(no_auth=True), {})
    assert open_cfg["TOKEN"] is None and any("--no-auth" in w for w in warnings(open_cfg))
    assert "?token=" not in banner(open_cfg)
    with pytest.raises(BridgescopeError, match="contradict"):
        app_config(_args(no_auth=True, token_file=str(tmp_path / "t")), {})
    with pytest.raises(BridgescopeError, match="does not exist"):
        app_config(_args(netns="bst-surely-missing-ns"), {})


# ---- against a real `bridgescope serve` ---------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real server on an empty namespace of its own: (base URL, audit log path)."""
    ns = f"{RUN_PREFIX}{secrets.token_hex(2)}-auth"
    sh("ip", "netns", "add", ns)
    state = tmp_path_factory.mktemp("bs-auth")
    audit, log = state / "audit.jsonl", state / "serve.log"
    port = serve_process.free_port()
    proc = None
    try:
        with log.open("w") as out:
            proc = serve_process.start(ns, port, args=("--audit-log", str(audit)), output=out,
                                       env={"BRIDGESCOPE_TOKEN": TOKEN, "BRIDGESCOPE_STATE_DIR": str(state)})
        base = f"http://127.0.0.1:{port}"
        serve_process.wait_until_answering(proc, base + "/api/session", headers=BEARER, timeout=600, log=log)
        yield base, audit
    finally:
        if proc is not None:
            serve_process.stop(proc)
        delete_netns(ns)


PREVIEW = {"container": "", "host_port": "1", "container_port": "1"}


@pytest.mark.kernel
def test_real_server_login_flow(served):
    base, _ = served
    first = requests.get(f"{base}/?token={TOKEN}", timeout=10)  # what the browser loads first
    assert first.ok and 'id="boot"' in first.text and "csrf" not in first.text.lower()
    assert "Set-Cookie" not in first.headers
    headers = serve_process.login(base, TOKEN)
    page = requests.get(base + "/", headers=headers, timeout=10)
    assert page.ok and 'id="topology"' in page.text and "Set-Cookie" not in page.headers
    csrf = requests.get(base + "/api/session", headers=headers, timeout=10).json()["csrf_token"]
    assert csrf_of_page(page.text) == csrf
    resp = requests.post(base + "/forms/preview/forward", headers=headers, timeout=10,
                         data={"csrf_token": csrf, **PREVIEW})
    assert resp.status_code == 200 and "Container is required" in resp.text
    with requests.get(base + "/api/events", headers=headers, stream=True, timeout=30) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines(decode_unicode=True)
        assert next(line for line in lines if line.startswith("event:")) == "event: graph"


@pytest.mark.kernel
def test_real_server_the_cookie_sent_to_another_port_carries_nothing_usable(served):
    base, audit = served
    port = base.rsplit(":", 1)[1]
    # Everything a cookie jar for 127.0.0.1 could hold after a full sign-in: what the server
    # set (nothing, checked above and here) plus the old token cookie, sent by the attacker's
    # page on another port along with its own Origin.
    jar = requests.Session()
    jar.get(f"{base}/?token={TOKEN}", timeout=10)
    jar.post(base + "/auth/session", headers={**BEARER, "Origin": base}, timeout=10)
    assert not jar.cookies
    cookies = {f"bridgescope_token_{port}": TOKEN}
    evil = {"Origin": "http://127.0.0.1:18493", "Sec-Fetch-Site": "same-site"}
    session = requests.get(base + "/api/session", cookies=cookies, timeout=10)
    assert session.status_code == 401 and "csrf_token" not in session.text
    page = requests.get(base + "/", cookies=cookies, timeout=10)
    assert 'id="boot"' in page.text and 'id="topology"' not in page.text and "csrf" not in page.text.lower()
    assert requests.get(base + "/api/graph", cookies=cookies, timeout=10).status_code == 401
    assert requests.get(base + "/api/events", cookies=cookies, timeout=10).status_code == 401
    change = requests.post(base + "/api/forwards", cookies=cookies, headers=evil, timeout=10,
                           json={"container": "c", "spec": "8080:80"})
    assert change.status_code in (401, 403)
    assert requests.post(base + "/auth/session", cookies=cookies, headers=evil, timeout=10).status_code in (401, 403)
    # identical refusals within a minute cost a bounded number of audit lines
    refused = {e["result"] for e in audit_lines(audit)}
    assert "refused: no session or access token" in refused


@pytest.mark.kernel
@pytest.mark.parametrize("origin,fetch_site", [("http://127.0.0.1:18493", "same-site"), ("null", "cross-site")])
def test_real_server_refuses_changes_from_another_origin(served, origin, fetch_site):
    base, audit = served
    headers = serve_process.login(base, TOKEN)
    csrf = requests.get(base + "/api/session", headers=headers, timeout=10).json()["csrf_token"]
    resp = requests.post(base + "/forms/preview/forward", timeout=10, data={"csrf_token": csrf, **PREVIEW},
                         headers={**headers, "Origin": origin, "Sec-Fetch-Site": fetch_site})
    assert resp.status_code == 403 and "Cross-site request refused" in resp.text
    last = [e for e in audit_lines(audit) if e["result"].startswith("refused: ")][-1]
    assert last["request"]["origin"] == origin and last["ok"] is False
