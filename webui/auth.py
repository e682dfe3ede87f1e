"""Who may talk to the dashboard: sessions bound to the origin, CSRF, Origin and Host checks.

The dashboard runs as root and can rewrite a host's firewall. Browsers send a cookie for
127.0.0.1 to every port of 127.0.0.1, so no cookie carries anything here: a tab proves itself
with a per-tab session secret it keeps in sessionStorage (scoped to scheme, host and port) and
sends as a header. It gets that secret once, by trading the access token for it
(POST /auth/session with `Authorization: Bearer`); scripts may send the token itself on every
request. A navigation carries no header, so it gets a generic boot page (no data, no secret)
whose script fetches the real page with the header. Every mutation needs the session's CSRF
token and an Origin that is ours, and the Host header must name the address we listen on (DNS
rebinding). Every refusal is audited, identical ones at most once a minute per client.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from markupsafe import escape
from werkzeug.local import LocalProxy

from bridgescope.collector.errors import BridgescopeError
from bridgescope.plumbing import validate
from bridgescope.plumbing.errors import ValidationError

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_HEADER = "X-Bridgescope-Session"
LOGIN_PATH = "/auth/session"
STATIC_PREFIX = "/static/"  # the vendored and our own scripts and styles: public, no secret

# No inline script or style anywhere: everything comes from /static. Cytoscape and htmx
# style elements through the CSSOM, which style-src does not govern.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: a browser tab's session, a script with the token, or anyone
    (--no-auth). Each has the CSRF token its mutations must carry."""
    kind: str  # "session" | "bearer" | "anonymous"
    csrf: str


@dataclass
class _Entry:
    csrf: str
    seen: float


class Sessions:
    """Per-tab sessions in memory: forgotten after `idle` seconds unused, at most `cap` of them
    (the least recently used goes first). A restart signs every tab out, by design."""

    def __init__(self, idle: float = 12 * 3600, cap: int = 256, clock=time.monotonic):
        self.idle, self.cap, self._clock = idle, cap, clock
        self._by_id: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def open(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = _Entry(secrets.token_urlsafe(24), self._clock())
            while len(self._by_id) > self.cap:
                self._by_id.popitem(last=False)
        return sid

    def csrf_of(self, sid: str) -> str | None:
        """The session's CSRF token (and it counts as used), or None if unknown or expired."""
        now = self._clock()
        with self._lock:
            entry = self._by_id.get(sid)
            if entry is None:
                return None
            if now - entry.seen > self.idle:
                del self._by_id[sid]
                return None
            entry.seen = now
            self._by_id.move_to_end(sid)
            return entry.csrf

    def __len__(self) -> int:
        return len(self._by_id)


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None  # None only when --no-auth was given explicitly
    csrf: str  # for scripts holding the token, and for everyone under --no-auth
    listen_host: str
    listen_port: int
    extra_hosts: frozenset[str] = frozenset()
    sessions: Sessions = field(default_factory=Sessions, compare=False, repr=False)


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
    host, sep, port_text = listen.rpartition(":")
    port = _port_number(port_text) if sep else None
    if port is None:
        raise BridgescopeError(f"--listen wants HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise BridgescopeError(f"--listen wants an IP address, got {host!r}") from None
    return host, port


def _port_number(text: str) -> int | None:
    """The port in text (ASCII digits, 1-65535: validate.port, as every form field), or None."""
    try:
        return validate.port(text, "port")
    except ValidationError:
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host_header(value: str, default_port: int = 80) -> tuple[str, int] | None:
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else str(default_port)
    else:
        name, _, port = value.partition(":")
        port = port or str(default_port)
    number = _port_number(port)
    return (name, number) if number is not None else None


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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, scheme: str, host_header: str) -> bool:
    """Is this Origin header exactly the origin the request was sent to (scheme, host, port)?"""
    o_scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or o_scheme not in _DEFAULT_PORTS or "/" in rest:
        return False
    theirs = _split_host_header(rest, _DEFAULT_PORTS[o_scheme])
    ours = _split_host_header(host_header, _DEFAULT_PORTS.get(scheme, 80))
    return o_scheme == scheme and theirs is not None and theirs == ours


def origin_problem(origin: str | None, fetch_site: str | None, scheme: str, host_header: str,
                   principal: Principal) -> str | None:
    """Why a mutation's Origin / Sec-Fetch-Site show it did not come from our own pages (None:
    it did). A browser always sends one of them; only a script without either may pass, and
    only with the token (or under --no-auth)."""
    if fetch_site not in (None, "same-origin", "none"):
        return f"cross-site request (Sec-Fetch-Site: {fetch_site})"
    if origin and origin != "null":
        return None if same_origin(origin, scheme, host_header) else f"foreign Origin {origin!r}"
    if fetch_site == "same-origin":
        return None
    if fetch_site is None and origin is None and principal.kind != "session":
        return None
    return "no Origin and no Sec-Fetch-Site: same-origin"


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def policy() -> AccessPolicy:
    return current_app.extensions["bridgescope_access"]


def current_csrf() -> str:
    """The CSRF token of the request's principal ("" before authentication)."""
    principal = g.get("bridgescope_principal")
    return principal.csrf if principal is not None else ""


def session_keeper() -> Callable[[], bool]:
    """For a response that outlives its request (the event stream): a check, callable from
    its generator, that the request's session still exists; each call counts as use, so an
    open live view keeps its tab signed in."""
    p, principal = policy(), g.get("bridgescope_principal")
    sid = (request.headers.get(SESSION_HEADER) or "").strip()
    if principal is None or principal.kind != "session":
        return lambda: True
    return lambda: p.sessions.csrf_of(sid) is not None


def _bearer() -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _by_token(p: AccessPolicy, token: str | None) -> tuple[Principal | None, str | None]:
    if token is None:
        return None, "no access token"
    return (Principal("bearer", p.csrf), None) if _same(token, p.token) else (None, "wrong access token")


def authenticate(p: AccessPolicy) -> tuple[Principal | None, str | None]:
    """(principal, None), or (None, why) for credentials that do not hold, or (None, None)
    when the request carries none at all."""
    sid = request.headers.get(SESSION_HEADER)
    if sid is not None:
        csrf = p.sessions.csrf_of(sid.strip())
        if csrf:
            return Principal("session", csrf), None
        if p.token is not None:  # under --no-auth a stale session from an earlier run is moot
            return None, "unknown or expired session"
    token = _bearer()
    if token is not None and p.token is not None:
        return _by_token(p, token)
    if p.token is None:
        return Principal("anonymous", p.csrf), None
    return None, None


# ---- refusals ---------------------------------------------------------------------------------

def _deny(status: int, message: str) -> Response:
    if request.path.startswith(("/api/", "/auth/")) or request.accept_mimetypes.best == "application/json":
        resp = jsonify({"error": message})
    else:
        resp = Response(f"<!doctype html><title>bridgescope</title><p>{escape(message)}</p>",
                        mimetype="text/html")
    resp.status_code = status
    return resp


def refuse(status: int, reason: str, message: str) -> Response:
    """Refuse the request and write it to the audit log (rate-limited per client and reason)."""
    info = {"method": request.method, "path": request.path}
    for name in ("Origin", "Sec-Fetch-Site"):
        if request.headers.get(name) is not None:
            info[name.lower()] = request.headers[name]
    current_app.extensions["bridgescope"].audit.refused(request.remote_addr or "?", info, reason)
    return _deny(status, message)


SIGN_IN = "open the URL that bridgescope serve printed (it ends in ?token=...)"


def boot_page() -> Response:
    """What a navigation (no header can ride along) gets: no data, no secret, just the script
    that fetches the real page with this tab's session."""
    return Response(render_template("boot.html"), mimetype="text/html")


def _wants_boot_page() -> bool:
    return request.method in ("GET", "HEAD") and not request.path.startswith("/api/")


def guard() -> Response | None:
    """before_request: Host, credentials, Origin, read-only and CSRF, in that order."""
    p = policy()
    if not host_allowed(request.host, p):
        return refuse(403, "Host header", f"Host {request.host!r} is not the address this "
                                          "dashboard listens on.")
    if request.path.startswith(STATIC_PREFIX):
        return None
    if request.path == LOGIN_PATH:  # only the token itself opens a session
        principal, why = (Principal("anonymous", p.csrf), None) if p.token is None else _by_token(p, _bearer())
    else:
        principal, why = authenticate(p)
    if principal is None:
        if why is None and _wants_boot_page():
            return boot_page()
        reason = why or "no session or access token"
        return refuse(401, reason, f"This dashboard needs a session ({reason}): {SIGN_IN}.")
    g.bridgescope_principal = principal
    if request.method not in MUTATING_METHODS:
        return None
    why = origin_problem(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                         request.scheme, request.host, principal)
    if why is not None:
        return refuse(403, f"origin: {why}", f"Cross-site request refused: {why}.")
    if request.path == LOGIN_PATH:
        return None
    if current_app.config.get("READ_ONLY") and not _view_only():
        return refuse(403, "read-only", "This dashboard is read-only (started with --read-only).")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not _same(given, principal.csrf):
        return refuse(403, "CSRF token", "Missing or stale CSRF token: reload the page and try again.")
    return None


def view_only(view: Callable) -> Callable:
    """Marks a route whose POST changes what the dashboard shows, never a host: a read-only
    dashboard still serves it (CSRF and origin checks still apply)."""
    view.view_only = True  # type: ignore[attr-defined]
    return view


def _view_only() -> bool:
    return bool(getattr(current_app.view_functions.get(request.endpoint or ""), "view_only", False))


def login() -> Response:
    """POST /auth/session: the access token (Authorization: Bearer) buys a tab its session."""
    return jsonify({"session": policy().sessions.open(), "header": SESSION_HEADER})


def secure_headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"  # the first URL holds the token
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def install(app: Flask, access: AccessPolicy) -> None:
    app.extensions["bridgescope_access"] = access
    app.before_request(guard)
    app.after_request(secure_headers)
    app.add_url_rule(LOGIN_PATH, "auth.login", login, methods=["POST"])

    # Globals, not a context processor: imported form macros see them too. The proxy reads
    # the CSRF token of the request being rendered.
    app.jinja_env.globals.update(csrf_token=LocalProxy(current_csrf), csrf_field=CSRF_FIELD)
