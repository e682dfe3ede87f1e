"""Who may talk to the dashboard: access token, CSRF token, Host check, security headers.

The dashboard runs as root and can rewrite a host's firewall, so every request needs the
access token (cookie, `?token=` once, or `Authorization: Bearer`), every mutation needs the
CSRF token as well, and the Host header must name the address we listen on: a page on an
attacker's site that rebinds its DNS name to 127.0.0.1 then still cannot talk to us.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from flask import Flask, Response, current_app, jsonify, redirect, request

from bridgescope.collector.errors import BridgescopeError

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

# No inline script or style anywhere: everything comes from /static. Cytoscape and htmx
# style elements through the CSSOM, which style-src does not govern.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None  # None only when --no-auth was given explicitly
    csrf: str
    listen_host: str
    listen_port: int
    extra_hosts: frozenset[str] = frozenset()

    @property
    def cookie_name(self) -> str:
        # Cookies ignore ports: two dashboards on one machine must not overwrite each other.
        return f"bridgescope_token_{self.listen_port}"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def read_token(token_file: str | None, environ: dict[str, str] | None = None) -> str:
    """The access token: --token-file, else $BRIDGESCOPE_TOKEN, else a fresh random one."""
    env = os.environ if environ is None else environ
    if token_file:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as err:
            raise BridgescopeError(f"cannot read the token file {token_file}: {err.strerror}") from err
        if not text:
            raise BridgescopeError(f"the token file {token_file} is empty")
        return text
    return env.get("BRIDGESCOPE_TOKEN", "").strip() or new_token()


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8470', '[::1]:8470', ':8470' -> (host, port); raises on nonsense."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BridgescopeError(f"--listen wants HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise BridgescopeError(f"--listen wants an IP address, got {host!r}") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host_header(value: str) -> tuple[str, int] | None:
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "80"
    else:
        name, _, port = value.partition(":")
        port = port or "80"
    return (name, int(port)) if port.isdigit() else None


def host_allowed(header: str, policy: AccessPolicy) -> bool:
    """Does this Host header name our listen address (or an explicitly allowed name)?"""
    parsed = _split_host_header(header or "")
    if parsed is None or parsed[1] != policy.listen_port:
        return False
    name = parsed[0]
    if name in policy.extra_hosts:
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        # A DNS name can be rebound to us; only "localhost" is trusted, and only on loopback.
        return name == "localhost" and is_loopback(policy.listen_host)
    listen = policy.listen_host
    if listen in ("0.0.0.0", "::"):
        return True  # any of our addresses; IP literals cannot be rebound
    if is_loopback(listen):
        return addr.is_loopback
    return addr == ipaddress.ip_address(listen)


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def policy() -> AccessPolicy:
    return current_app.extensions["bridgescope_access"]


def _presented_token() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(policy().cookie_name)


def _deny(status: int, message: str) -> Response:
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        resp = jsonify({"error": message})
    else:
        resp = Response(f"<!doctype html><title>bridgescope</title><p>{message}</p>",
                        mimetype="text/html")
    resp.status_code = status
    return resp


def _url_without_token() -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
    return request.path + (f"?{urlencode(args)}" if args else "")


def _token_check(p: AccessPolicy) -> Response | None:
    given = request.args.get("token")
    if given is not None:
        if not _same(given, p.token):
            return _deny(401, "Wrong access token. Open the URL that bridgescope serve printed.")
        # Like Jupyter: trade the URL token for a cookie, then drop it from the address bar.
        resp = redirect(_url_without_token(), code=303)
        resp.set_cookie(p.cookie_name, given, httponly=True, samesite="Strict", path="/")
        return resp
    if not _same(_presented_token(), p.token):
        return _deny(401, "This dashboard needs its access token: open the URL that "
                          "bridgescope serve printed (it ends in ?token=...).")
    return None


def _csrf_check(p: AccessPolicy) -> Response | None:
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return _deny(403, "Cross-site request refused.")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not _same(given, p.csrf):
        return _deny(403, "Missing or stale CSRF token: reload the page and try again.")
    return None


def guard() -> Response | None:
    """before_request: Host, token, read-only and CSRF, in that order."""
    p = policy()
    if not host_allowed(request.host, p):
        return _deny(403, f"Host {request.host!r} is not the address this dashboard listens on.")
    if p.token is not None:
        denied = _token_check(p)
        if denied is not None:
            return denied
    if request.method in MUTATING_METHODS:
        if current_app.config.get("READ_ONLY"):
            return _deny(403, "This dashboard is read-only (started with --read-only).")
        return _csrf_check(p)
    return None


def secure_headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"  # the token must never leak in a Referer
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def install(app: Flask, access: AccessPolicy) -> None:
    app.extensions["bridgescope_access"] = access
    app.before_request(guard)
    app.after_request(secure_headers)

    # Globals, not a context processor: imported form macros see them too.
    app.jinja_env.globals.update(csrf_token=access.csrf, csrf_field=CSRF_FIELD)
