"""Who may use the dashboard: token, cookie, CSRF, Host check, read-only, security headers.

Every route in the app's URL map is probed, so a blueprint added later (the workshop) is
covered by the same rules without touching this file.
"""
from __future__ import annotations

import argparse
import re

import pytest

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui import auth
from bridgescope.webui.app import create_app
from bridgescope.webui.cli_serve import app_config, banner, warnings
from webui_sources import StaticSource, sample_snapshot

TOKEN = "s3cret-token"
BASE = "http://127.0.0.1:8470"
SAMPLE_ARGS = {"element_id": "ns-1001", "name": "x", "kind": "forward", "filename": "app.js"}


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


def authed(app):
    client = app.test_client()
    client.set_cookie(auth.AccessPolicy(TOKEN, "", "127.0.0.1", 8470).cookie_name, TOKEN,
                      domain="127.0.0.1")
    return client


def test_every_route_refuses_a_request_without_the_token():
    app = make_app()
    client = app.test_client()
    probed = routes(app)
    assert ("GET", "/api/events") in probed and ("GET", "/static/app.js") in probed
    for method, url in probed:
        resp = client.open(url, method=method, base_url=BASE)
        assert resp.status_code == 401, (method, url, resp.status_code)


def test_token_in_the_url_becomes_an_httponly_strict_cookie_and_leaves_the_url():
    client = make_app().test_client()
    resp = client.get("/tables/?q=8080&token=" + TOKEN, base_url=BASE)
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/tables/?q=8080"
    cookie = resp.headers["Set-Cookie"]
    assert f"bridgescope_token_8470={TOKEN}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/tables/?q=8080", base_url=BASE).status_code == 200


def test_a_wrong_token_is_refused_in_url_cookie_and_header():
    app = make_app()
    client = app.test_client()
    assert client.get("/?token=nope", base_url=BASE).status_code == 401
    assert client.get("/", base_url=BASE, headers={"Authorization": "Bearer nope"}).status_code == 401
    client.set_cookie("bridgescope_token_8470", "nope", domain="127.0.0.1")
    assert client.get("/api/graph", base_url=BASE).status_code == 401


def test_bearer_token_works_for_scripts():
    client = make_app().test_client()
    resp = client.get("/api/topology", base_url=BASE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert {n["name"] for n in resp.get_json()["namespaces"]} == {"host", "web"}


def test_no_token_configured_means_a_random_one_not_no_auth():
    app = create_app({"SOURCE": StaticSource(sample_snapshot())})
    assert app.test_client().get("/", base_url=BASE).status_code == 401
    open_app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True})
    assert open_app.test_client().get("/", base_url=BASE).status_code == 200


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
])
def test_host_allowed(listen, header, ok):
    host, port = auth.parse_listen(listen)
    assert auth.host_allowed(header, auth.AccessPolicy("t", "c", host, port)) is ok


def test_an_explicitly_allowed_name_passes_the_host_check():
    client = make_app(ALLOWED_HOSTS=("dash.example",)).test_client()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/", base_url="http://dash.example:8470", headers=bearer).status_code == 200
    assert client.get("/", base_url="http://other.example:8470", headers=bearer).status_code == 403


def test_every_mutation_needs_the_csrf_token():
    app = make_app()
    client = authed(app)
    csrf = app.extensions["bridgescope_access"].csrf
    mutations = routes(app, ("POST", "PUT", "PATCH", "DELETE"))
    assert len(mutations) >= 8
    for method, url in mutations:
        missing = client.open(url, method=method, base_url=BASE, data={"name": "x"})
        wrong = client.open(url, method=method, base_url=BASE, headers={"X-CSRF-Token": "nope"})
        assert missing.status_code == 403 and b"CSRF" in missing.data, (method, url)
        assert wrong.status_code == 403, (method, url)
    cross = client.post("/api/forwards", base_url=BASE, json={"container": "c", "spec": "1:1"},
                        headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and b"Cross-site" in cross.data


def test_read_only_refuses_every_mutation_and_shows_no_forms():
    app = make_app(READ_ONLY=True)
    client = authed(app)
    csrf = app.extensions["bridgescope_access"].csrf
    for method, url in routes(app, ("POST", "PUT", "PATCH", "DELETE")):
        resp = client.open(url, method=method, base_url=BASE, headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 403 and b"read-only" in resp.data, (method, url)
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "Add port forward" not in page and "<form" not in page and "read-only" in page
    assert "Add port forward" not in client.get("/details/ns-2002", base_url=BASE).get_data(as_text=True)


def test_pages_carry_a_strict_csp_and_no_inline_script_or_style():
    client = authed(make_app())
    for url in ("/", "/tables/", "/audit", "/forms/", "/details/ns-2002", "/details/pf:ns-1001:tcp:*:8080"):
        resp = client.get(url, base_url=BASE)
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
                                    "dash.example:8470", "127.0.0.1:http"])
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
