"""JSON API: the snapshot, the graph elements, the audit log, and the mutating commands.

Same data as the CLI (`snapshot --json`) and the same plumbing calls as the forms. Every
mutation needs the CSRF token (header X-CSRF-Token; GET /api/session hands it to scripts
that hold the access token) and accepts "dry_run": true to get the commands without running them.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui import auth, bodies
from bridgescope.webui.app import runtime
from bridgescope.webui.changes import perform

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/topology")
def topology() -> Response:
    from bridgescope.collector.export import to_json

    resp = jsonify(to_json(runtime().source.snapshot))
    if request.args.get("download"):
        resp.headers["Content-Disposition"] = 'attachment; filename="bridgescope-topology.json"'
    return resp


@bp.get("/graph")
def graph() -> Response:
    from bridgescope.collector.graph import to_elements

    source = runtime().source
    show_lo = request.args.get("loopback") in ("1", "true", "yes")
    # The live elements are already built; only the loopback view is computed on demand.
    resp = jsonify(to_elements(source.snapshot, show_loopback=True) if show_lo else source.elements)
    resp.headers["X-Topology-Version"] = str(source.version)
    return resp


@bp.get("/session")
def session() -> Response:
    return jsonify({"csrf_token": auth.current_csrf(), "read_only": runtime().settings.read_only})


@bp.get("/audit")
def audit() -> Response:
    entries = runtime().audit.recent(int(request.args.get("n", 50)))
    return jsonify([{"time": e.time, "client": e.client, "request": e.request,
                     "commands": list(e.commands), "result": e.result, "ok": e.ok}
                    for e in entries])


def _body() -> dict[str, Any]:
    try:
        body = bodies.json_body(request)
    except bodies.BodyError as err:
        abort(_error(400, str(err)))
    return body if isinstance(body, dict) else {}


def _error(status: int, message: str, **extra: Any) -> Response:
    resp = jsonify({"error": message, **extra})
    resp.status_code = status
    return resp


def _want(body: dict, *names: str) -> dict[str, Any]:
    missing = [n for n in names if body.get(n) in (None, "")]
    if missing:
        abort(_error(422, f"{missing[0]} is required", field=missing[0]))
    return {n: body[n] for n in names}


def _run(action: str, args: dict[str, Any], body: dict) -> Response:
    from bridgescope.plumbing.errors import PlumbingError, ValidationError

    dry_run = bool(body.get("dry_run")) or request.args.get("dry_run") in ("1", "true")
    try:
        result = perform(action, args, dry_run=dry_run)
    except ValidationError as err:
        return _error(422, getattr(err, "message", str(err)), field=err.field)
    except PlumbingError as err:
        return _error(409, str(err), step=err.step)
    except BridgescopeError as err:
        return _error(409, str(err))
    return jsonify({"commands": list(result.commands), "summary": result.summary,
                    "dry_run": dry_run})


def _optional(body: dict, *names: str) -> dict[str, Any]:
    return {n: body[n] for n in names if body.get(n) not in (None, "")}


@bp.post("/networks")
def create_network() -> Response:
    body = _body()
    args = {**_want(body, "name", "subnet"), **_optional(body, "gateway")}
    if "masquerade" in body:
        args["masquerade"] = bool(body["masquerade"])
    return _run("create_network", args, body)


@bp.delete("/networks/<name>")
def remove_network(name: str) -> Response:
    body = _body()
    force = bool(body.get("force")) or request.args.get("force") in ("1", "true")
    return _run("remove_network", {"name": name, "force": force}, body)


@bp.post("/containers")
def create_container() -> Response:
    body = _body()
    args = {**_want(body, "name", "network"), **_optional(body, "ip")}
    ports = body.get("ports") or []
    if isinstance(ports, str) or not all(isinstance(p, str) for p in ports):
        return _error(422, 'ports must be a list of strings like "8080:80/tcp"', field="ports")
    args["ports"] = tuple(ports)
    return _run("create_container", args, body)


@bp.delete("/containers/<name>")
def remove_container(name: str) -> Response:
    body = _body()
    return _run("remove_container", {"name": name}, body)


@bp.post("/forwards")
def add_forward() -> Response:
    body = _body()
    return _run("add_forward", _want(body, "container", "spec"), body)


@bp.delete("/forwards")
def remove_forward() -> Response:
    body = _body()
    return _run("remove_forward", _want(body, "container", "spec"), body)
