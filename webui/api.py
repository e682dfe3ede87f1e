"""JSON API: the snapshot, the graph elements, the audit log, and the mutating commands.

Same data as the CLI (`snapshot --json`) and the same plumbing calls as the forms. Every
mutation needs the CSRF token (header X-CSRF-Token; GET /api/session hands it to scripts
that hold the access token) and accepts "dry_run": true to get the commands without running them.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from bridgescope.collector.errors import BridgescopeError
from bridgescope.plumbing import validate
from bridgescope.webui import auth, bodies
from bridgescope.webui.app import runtime
from bridgescope.webui.changes import perform, refused
from bridgescope.webui.fleet import routes as fleet_routes

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/topology")
def topology() -> Response:
    from bridgescope.collector.render.export import to_json

    resp = jsonify(to_json(runtime().source.snapshot))
    if request.args.get("download"):
        resp.headers["Content-Disposition"] = 'attachment; filename="bridgescope-topology.json"'
    return resp


@bp.get("/graph")
def graph() -> Response:
    from bridgescope.collector.render.graph import to_elements

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
    n = request.args.get("n", "50")
    if not (n.isascii() and n.isdigit() and len(n) <= 6):
        return _error(400, f"n must be a number of entries, not {validate.shown(n)}", field="n")
    entries = runtime().audit.recent(int(n))
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


class Refused(Exception):
    """A field of the request is missing or malformed: 400 when it has the wrong JSON type,
    422 when its value is refused. Audited unless the request only asked for a dry run."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


@bp.errorhandler(Refused)
def _refused(err: Refused) -> Response:
    if not _asked_dry_run():
        action = request.endpoint.rpartition(".")[2] if request.endpoint else request.path
        refused(action, _body_for_audit(), str(err))
    return _error(err.status, err.message, field=err.field)


def _asked_dry_run() -> bool:
    body = request.get_json(silent=True)
    return (isinstance(body, dict) and body.get("dry_run") is True) or \
        request.args.get("dry_run") in FLAG_TRUE


def _body_for_audit() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


TEXT, OPTIONAL_TEXT, FLAG, TEXT_LIST = "text", "optional text", "flag", "text list"
FLAG_TRUE, FLAG_FALSE = ("1", "true"), ("", "0", "false")
_EXPECTED = {TEXT: "a string", OPTIONAL_TEXT: "a string or null", FLAG: "true or false",
             TEXT_LIST: 'a list of strings like ["8080:80/tcp"]'}


def _of_type(kind: str, value: Any) -> bool:
    if kind == FLAG:
        return isinstance(value, bool)
    if kind == TEXT_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str) or (kind == OPTIONAL_TEXT and value is None)


def _fields(body: dict, required: dict[str, str], optional: dict[str, str]) -> dict[str, Any]:
    """The body's fields checked against their JSON types; unknown fields are refused (a
    misspelt "masqerade" silently ignored would build what was not asked for). Values are
    checked by the plumbing, through the same functions the forms and the CLI use."""
    known = {**required, **optional, "dry_run": FLAG}
    for name, value in body.items():
        if name not in known:
            raise Refused(400, name[:40], f"unknown field {validate.shown(name)}; "
                                          f"expected {', '.join(sorted(known))}")
        if not _of_type(known[name], value):
            raise Refused(400, name, f"{name} must be {_EXPECTED[known[name]]}, "
                                     f"not {validate.shown(value)}")
    missing = [n for n in required if body.get(n) in (None, "")]
    if missing:
        raise Refused(422, missing[0], f"{missing[0]} is required")
    # An optional field given as null or "" means "not given" (the default gateway, the next
    # free address), as it always has.
    return {n: body[n] for n in (*required, *optional) if body.get(n) not in (None, "")}


def _query_flag(name: str) -> bool:
    raw = request.args.get(name, "")
    if raw not in FLAG_TRUE + FLAG_FALSE:
        raise Refused(400, name, f"?{name}= must be 1, true, 0 or false, not {validate.shown(raw)}")
    return raw in FLAG_TRUE


def _run(action: str, args: dict[str, Any], body: dict) -> Response:
    from bridgescope.plumbing.errors import PlumbingError, ValidationError

    dry_run = body.get("dry_run") is True or _query_flag("dry_run")
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


@bp.post("/networks")
def create_network() -> Response:
    body = _body()
    args = _fields(body, {"name": TEXT, "subnet": TEXT},
                   {"gateway": OPTIONAL_TEXT, "masquerade": FLAG})
    return _run("create_network", args, body)


@bp.delete("/networks/<name>")
def remove_network(name: str) -> Response:
    body = _body()
    args = _fields(body, {}, {"force": FLAG})
    force = args.get("force", False) or _query_flag("force")
    return _run("remove_network", {"name": name, "force": force}, body)


@bp.post("/containers")
def create_container() -> Response:
    body = _body()
    args = _fields(body, {"name": TEXT, "network": TEXT}, {"ip": OPTIONAL_TEXT, "ports": TEXT_LIST})
    args["ports"] = tuple(args.get("ports", ()))
    return _run("create_container", args, body)


@bp.delete("/containers/<name>")
def remove_container(name: str) -> Response:
    body = _body()
    _fields(body, {}, {})
    return _run("remove_container", {"name": name}, body)


@bp.post("/forwards")
def add_forward() -> Response:
    if current_app.config.get("FLEET"):  # the agent of the named host does it
        return fleet_routes.forward("POST")
    body = _body()
    return _run("add_forward", _fields(body, {"container": TEXT, "spec": TEXT}, {}), body)


@bp.delete("/forwards")
def remove_forward() -> Response:
    if current_app.config.get("FLEET"):
        return fleet_routes.forward("DELETE")
    body = _body()
    return _run("remove_forward", _fields(body, {"container": TEXT, "spec": TEXT}, {}), body)
