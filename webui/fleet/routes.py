"""The dashboard's fleet routes: the host list, opening a folded host, and port forwards
carried out by the agent of the host they belong to.

A forward change names its host; the agent validates, applies and audits it (with the
dashboard's client as the actor), and the dashboard audits the request and the agent's answer
as well. Unknown host: 400. Agent unreachable: 502 in one line. The agent's 4xx: passed
through with its message.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from bridgescope.webui import auth, bodies
from bridgescope.webui.app import runtime
from bridgescope.webui.audit import scrub
from bridgescope.webui.fleet import client

bp = Blueprint("fleet", __name__, url_prefix="/api/fleet")

FORWARD_FIELDS = {"host", "container", "spec"}


def enabled() -> bool:
    return bool(current_app.config.get("FLEET"))


def _error(status: int, message: str, **extra: Any) -> Response:
    resp = jsonify({"error": message, **extra})
    resp.status_code = status
    return resp


def _source():
    if not enabled():
        abort(_error(404, "this dashboard shows one host, not a fleet"))
    return runtime().source


@bp.get("/hosts")
def hosts() -> Response:
    return jsonify(_source().hosts())


@bp.post("/open")
@auth.view_only  # unfolds a host in the picture: a read-only dashboard of many hosts needs it most
def open_host() -> Response:
    body = _json()
    host = body.get("host")
    if not isinstance(host, str) or not _source().open_host(host):
        return _error(400, f"no such host: {str(host)[:80]!r}", field="host")
    return jsonify({"host": host})


def _json() -> dict:
    try:
        body = bodies.json_body(request)
    except bodies.BodyError as err:
        abort(_error(400, str(err)))
    if not isinstance(body, dict):
        abort(_error(400, "expected a JSON object"))
    return body


def forward(method: str) -> Response:
    """POST/DELETE /api/forwards in fleet mode: {"host", "container", "spec"} -> the agent."""
    if current_app.config.get("READ_ONLY"):
        return _error(403, "this dashboard is read-only")
    body = _json()
    unknown = sorted(set(body) - FORWARD_FIELDS)
    if unknown:
        return _error(400, f"unknown field {unknown[0][:40]!r}; expected container, host, spec", field=unknown[0][:40])
    for name in sorted(FORWARD_FIELDS):
        if not isinstance(body.get(name), str) or not body[name]:
            return _error(400, f"{name} is required (a string)", field=name)
    endpoint = _source().endpoint(body["host"])
    if endpoint is None:
        return _error(400, f"no such host: {body['host'][:80]!r}", field="host")
    actor = f"dashboard client {request.remote_addr or '?'}"
    sent = {"target": body["container"], "mapping": body["spec"], "actor": actor}
    info = {"method": method, "path": request.path, "action": "add_forward" if method == "POST" else "remove_forward",
            "host": body["host"], "agent": endpoint.url, "args": scrub(sorted(sent.items()))}
    audit = runtime().audit
    try:
        status, answer = client.request(endpoint, method, "/v1/forwards", sent)
    except (OSError, client.AgentError, ValueError) as err:
        why = f"the agent of {body['host']} did not answer: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}"
        audit.record(request.remote_addr or "?", info, (), f"error: {why}", ok=False)
        return _error(502, why)
    commands = tuple(str(c) for c in answer.get("commands") or ())
    if status < 300:
        audit.record(request.remote_addr or "?", info, commands, f"ok: agent answered {status}")
        return jsonify({**answer, "host": body["host"]}), status
    message = str(answer.get("error") or f"the agent answered {status}").splitlines()[0][:500]
    audit.record(request.remote_addr or "?", info, commands, f"error: agent answered {status}: {message}", ok=False)
    if 400 <= status < 500:
        return _error(status, message)
    return _error(502, f"the agent of {body['host']} failed: {message}")


def details_panel(element_id: str) -> str | None:
    """The panel of an element of the merged picture: what its agent sent (names, addresses,
    state, owner); None if there is no such element. The full panel (rules, counters, verdicts)
    needs the host's own snapshot: `bridgescope serve` on that node."""
    from markupsafe import escape

    element = next((e for e in runtime().source.elements if e["data"]["id"] == element_id), None)
    if element is None:
        return None
    d = element["data"]
    rows = [("host", d.get("host")), ("kind", d.get("kind")), ("owner", d.get("owner")), ("state", d.get("state")),
            ("addresses", ", ".join(d.get("addresses") or ()) or None), ("MAC", d.get("mac")), ("MTU", d.get("mtu")),
            ("status", d.get("status"))]
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows if v not in (None, ""))
    title = str(d.get("label") or d["id"]).replace("\n", " ")
    return (f'<div class="details-head"><h2>{escape(title)}</h2></div><dl class="facts">{facts}</dl>'
            f'<p class="hint">As the agent of {escape(d.get("host"))} reports it. Rules, counters and '
            "verdicts: the doctor's findings in the host list, or <code>bridgescope serve</code> on that node.</p>")
