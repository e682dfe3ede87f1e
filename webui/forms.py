"""The forms that build plumbing: networks, containers, port forwards, and their removal.

Each form posts its fields; the server turns them into typed plumbing arguments (a message
next to the field when one is malformed), asks the plumbing for the commands with
dry_run=True to show them, and only with an explicit apply runs the change (all-or-nothing:
the plumbing undoes a half-done change itself). Creations preview live while the user types;
removals show their commands first and need a second, confirming click.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, make_response, render_template, request
from jinja2_fragments.flask import render_block

from bridgescope.collector.errors import BridgescopeError
from bridgescope.plumbing import validate
from bridgescope.plumbing.errors import ValidationError
from bridgescope.webui.app import runtime
from bridgescope.webui.changes import perform, refused
from bridgescope.webui.pages import is_htmx

bp = Blueprint("forms", __name__, url_prefix="/forms")
T = TypeVar("T")

PROTOCOLS = validate.PROTOCOLS
PREFIXES = ("g", "p")  # element-id prefixes: the global forms and the details panel's
CHECKED, UNCHECKED = ("on", "1", "true", "yes"), ("", "off", "0", "false", "no")


@dataclass
class FormView:
    """What one form shows: the values typed, errors by field, and the commands."""
    kind: str
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    commands: tuple[str, ...] = ()
    message: str | None = None
    applied: bool = False
    confirm: bool = False  # a removal whose commands are shown and awaits the second click
    prefix: str = "g"  # element-id prefix: "g" for the global forms, "p" in the details panel

    def error(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)


class FieldErrors(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


# ---- parsing: form strings -> plumbing keyword arguments (pure) -------------------------------
# Each field goes through the plumbing's own check (bridgescope.plumbing.validate), so the form,
# the JSON API and the CLI accept and refuse exactly the same values; the form only adds
# "required" and collects every field's message at once.

def _checked(errors: dict, name: str, check: Callable[..., T], *args: Any) -> T | None:
    try:
        return check(*args)
    except ValidationError as err:
        errors.setdefault(name, err.message)
        return None


def _port(values: dict, name: str, label: str, errors: dict) -> int | None:
    raw = _required(values, name, label, errors)
    return _checked(errors, name, validate.port, raw, name) if raw else None


def _required(values: dict, name: str, label: str, errors: dict) -> str:
    raw = values.get(name, "").strip()
    if not raw:
        errors[name] = f"{label} is required."
    return raw


def _name(values: dict, name: str, label: str, errors: dict) -> str:
    raw = _required(values, name, label, errors)
    if raw:
        _checked(errors, name, validate.name, raw, name)
    return raw


def _checkbox(values: dict, name: str, errors: dict) -> bool:
    raw = values.get(name, "").strip().lower()
    if raw not in CHECKED + UNCHECKED:
        errors[name] = f"{validate.shown(values[name])} is not a checkbox value: on, or absent."
    return raw in CHECKED


def forward_spec(values: dict[str, str]) -> dict[str, Any]:
    """Forward form fields -> {"container", "spec"} with spec in `docker -p` syntax."""
    errors: dict[str, str] = {}
    container = _required(values, "container", "Container", errors)
    if container:
        _checked(errors, "container", validate.container_ref, container, "container")
    host_port = _port(values, "host_port", "Host port", errors)
    container_port = _port(values, "container_port", "Container port", errors)
    proto = _checked(errors, "protocol", validate.protocol, values.get("protocol", "").strip() or "tcp")
    host_ip = _checked(errors, "host_ip", validate.host_ip, values.get("host_ip", "").strip())
    if errors:
        raise FieldErrors(errors)
    prefix = f"{host_ip}:" if host_ip else ""
    return {"container": container, "spec": f"{prefix}{host_port}:{container_port}/{proto}"}


def network_args(values: dict[str, str]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    args: dict[str, Any] = {"name": _name(values, "name", "Name", errors),
                            "subnet": _required(values, "subnet", "Subnet", errors),
                            "masquerade": _checkbox(values, "masquerade", errors)}
    net = _checked(errors, "subnet", validate.subnet, args["subnet"]) if args["subnet"] else None
    if values.get("gateway", "").strip():
        args["gateway"] = values["gateway"].strip()
        if net is not None:
            _checked(errors, "gateway", validate.gateway_for, net, args["gateway"])
        else:
            _checked(errors, "gateway", validate.address, args["gateway"], "gateway")
    if errors:
        raise FieldErrors(errors)
    return args


def container_args(values: dict[str, str]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    args: dict[str, Any] = {"name": _name(values, "name", "Name", errors),
                            "network": _name(values, "network", "Network", errors)}
    if values.get("ip", "").strip():
        args["ip"] = values["ip"].strip()
        _checked(errors, "ip", validate.address, args["ip"], "ip")
    args["ports"] = tuple(p for p in values.get("ports", "").replace(",", " ").split() if p)
    _checked(errors, "ports", validate.port_specs, args["ports"])
    if errors:
        raise FieldErrors(errors)
    return args


def name_args(values: dict[str, str], label: str) -> dict[str, Any]:
    errors: dict[str, str] = {}
    args: dict[str, Any] = {"name": _name(values, "name", label, errors)}
    if errors:
        raise FieldErrors(errors)
    return args


def remove_network_args(values: dict[str, str]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    force = _checkbox(values, "force", errors)
    try:
        args = name_args(values, "Network")
    except FieldErrors as err:
        errors = {**err.errors, **errors}
    if errors:
        raise FieldErrors(errors)
    return {**args, "force": force}


# Form -> (plumbing action, parser, which form field a plumbing "spec" error belongs to).
@dataclass(frozen=True)
class FormKind:
    action: str
    parse: Callable[[dict[str, str]], dict[str, Any]]
    spec_field: str
    done: str  # past tense for the success message


KINDS = {
    "forward": FormKind("add_forward", forward_spec, "host_port", "Port forward added"),
    "forward-remove": FormKind("remove_forward", forward_spec, "host_port", "Port forward removed"),
    "network": FormKind("create_network", network_args, "name", "Network created"),
    "container": FormKind("create_container", container_args, "ports", "Container created"),
    "remove-container": FormKind("remove_container", lambda v: name_args(v, "Container"),
                                 "name", "Container removed"),
    "remove-network": FormKind("remove_network", remove_network_args, "name", "Network removed"),
}
REMOVALS = frozenset({"forward-remove", "remove-container", "remove-network"})


FIELDS = {
    "forward": {"container", "host_port", "container_port", "protocol", "host_ip"},
    "network": {"name", "subnet", "gateway", "masquerade"},
    "container": {"name", "network", "ip", "ports"},
    "remove-container": {"name"},
    "remove-network": {"name", "force"},
}
FIELDS["forward-remove"] = FIELDS["forward"]


def field_for(kind: str, err_field: str) -> str | None:
    """Plumbing names fields by its own argument names; map them onto this form's fields
    (None: the error is about the form as a whole, e.g. the firewall backend)."""
    if kind.startswith("remove-") and err_field in ("container", "network"):
        return "name"
    if err_field in FIELDS[kind]:
        return err_field
    if err_field in ("spec", "proto", "host_port", "container_port", "protocol", "host_ip"):
        return KINDS[kind].spec_field
    return None


def handle(kind: str, values: dict[str, str], intent: str) -> tuple[FormView, int]:
    """The whole form round-trip: parse, preview or apply, and what to show afterwards.

    A submitted change refused for a bad field is audited (perform audits the plumbing's
    refusals; the form's own are audited here); a preview asks for nothing and is not."""
    prefix = values.get("form_prefix", "g")
    view = FormView(kind, values=dict(values), prefix=prefix if prefix in PREFIXES else "g")
    spec = KINDS[kind]
    dry_run = intent != "apply"
    try:
        args = spec.parse(values)
        result = perform(spec.action, args, dry_run=dry_run)
    except FieldErrors as err:
        view.errors.update(err.errors)
        view.message = "Nothing was changed: fix the marked fields."
        if not dry_run:
            refused(spec.action, values, str(err))
        return view, 422
    except ValidationError as err:
        field_name = field_for(kind, err.field)
        if field_name is None:
            view.message = f"Nothing was changed: {err.message}"
        else:
            view.error(field_name, err.message)
            view.message = "Nothing was changed: fix the marked fields."
        return view, 422
    except BridgescopeError as err:
        view.message = str(err)
        return view, 409
    view.commands = result.commands
    if dry_run:
        view.confirm = kind in REMOVALS
        view.message = "Nothing has run yet." if not view.confirm else \
            "These commands will run. Confirm to apply."
        return view, 200
    view.applied = True
    view.message = f"{spec.done}: {result.summary}"
    view.values = _kept_after_apply(kind, values)
    return view, 200


def _kept_after_apply(kind: str, values: dict[str, str]) -> dict[str, str]:
    """A forward form keeps what was added (so Remove undoes it); the others start afresh."""
    if kind in ("forward", "forward-remove"):
        return dict(values)
    keep = {"container": ("network",)}.get(kind, ())
    return {k: values[k] for k in keep if k in values} | {"form_prefix": values.get("form_prefix", "g")}


# ---- choices for selects ------------------------------------------------------------------------

def form_choices() -> dict[str, Any]:
    """Names the selects offer: the networks bridgescope manages on this host, and as forward
    targets its containers and every other container on a bridge of the served host."""
    from bridgescope.plumbing.api import load_state

    try:
        state = load_state(host=runtime().settings.host)
    except BridgescopeError:
        return {"networks": [], "containers": [], "forwards": [], "container_objects": [],
                "adoptable": {}}
    adoptable = _adoptable()
    ours = [c.name for c in state.containers]
    return {"networks": [n.name for n in state.networks],
            "containers": ours + sorted(set(adoptable.values()) - set(ours)),
            "forwards": list(state.forwards), "container_objects": list(state.containers),
            "adoptable": adoptable}


def _adoptable() -> dict[str, str]:
    """{namespace name: container name} of the containers on a bridge of the served host."""
    from bridgescope.plumbing import adopt

    snap = getattr(runtime().source, "snapshot", None)
    if snap is None:
        return {}
    found, _ = adopt.candidates(snap, {})
    return {c.netns.rsplit("/", 1)[-1] if c.netns.startswith("/run/netns/") else c.name: c.name
            for c in found}


# ---- routes -------------------------------------------------------------------------------------

def _render(view: FormView, status: int) -> Response:
    ctx = {"forms": {view.kind: view}, **form_choices()}
    if view.applied:
        ctx["audit"] = runtime().audit.recent(20)
    if is_htmx():
        body = render_block("forms.html", f"{view.kind.replace('-', '_')}_form", **ctx)
        if view.applied:  # refresh the audit list and the selects elsewhere on the page
            body += render_block("forms.html", "oob_after_change", **ctx)
    else:
        body = render_template("forms.html", **ctx)
    return make_response(body, status)


def _submit(kind: str) -> Response:
    values = {k: v for k, v in request.form.items() if k != "csrf_token"}
    intent = request.form.get("intent", "apply")
    view, status = handle(kind, values, "apply" if intent in ("apply", "confirm") else "preview")
    return _render(view, status)


@bp.get("/")
def index() -> str:
    return render_template("forms.html", forms={}, **form_choices())


@bp.get("/choices")
def choices() -> Response:
    """What the selects offer now: the page asks again after each kernel change, so a
    container made elsewhere (the CLI, another tab) appears without a reload."""
    found = form_choices()
    return jsonify({"containers": found["containers"], "networks": found["networks"]})


@bp.post("/forward")
def forward() -> Response:
    intent = request.form.get("intent", "add")
    if intent in ("remove", "confirm-remove"):
        values = {k: v for k, v in request.form.items() if k != "csrf_token"}
        view, status = handle("forward-remove", values,
                              "apply" if intent == "confirm-remove" else "preview")
        view.kind = "forward"  # the same form shows the removal and its confirm button
        return _render(view, status)
    values = {k: v for k, v in request.form.items() if k != "csrf_token"}
    view, status = handle("forward", values, "apply" if intent == "add" else "preview")
    return _render(view, status)


@bp.post("/preview/<kind>")
def preview(kind: str) -> Response:
    """Live preview while typing: only the outcome box (commands or what is wrong)."""
    if kind not in KINDS or kind in REMOVALS:
        return make_response("unknown form", 404)
    values = {k: v for k, v in request.form.items() if k != "csrf_token"}
    view, _ = handle(kind, values, "preview")
    if view.errors:
        view.message = " ".join(view.errors.values())
    return make_response(render_block("forms.html", "preview_box", forms={kind: view}, kind=kind), 200)


@bp.post("/network")
def network() -> Response:
    return _submit("network")


@bp.post("/container")
def container() -> Response:
    return _submit("container")


@bp.post("/remove-container")
def remove_container() -> Response:
    return _submit("remove-container")


@bp.post("/remove-network")
def remove_network() -> Response:
    return _submit("remove-network")


@bp.app_context_processor
def _form_helpers() -> dict:
    def new_form(kind: str, prefix: str = "g", **values: str) -> FormView:
        return FormView(kind, values=dict(values, form_prefix=prefix), prefix=prefix)
    return {"new_form": new_form}


# The protocol select lives in an imported macro, which sees globals but not context processors.
bp.record_once(lambda state: state.app.jinja_env.globals.update(protocols=PROTOCOLS))
