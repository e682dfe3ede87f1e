"""The forms that build plumbing: networks, containers, port forwards, and their removal.

Each form posts its fields; the server turns them into typed plumbing arguments (a message
next to the field when one is malformed), asks the plumbing for the commands with
dry_run=True to show them, and only with an explicit apply runs the change (all-or-nothing:
the plumbing undoes a half-done change itself). Creations preview live while the user types;
removals show their commands first and need a second, confirming click.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Blueprint, Response, make_response, render_template, request
from jinja2_fragments.flask import render_block

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui.app import runtime
from bridgescope.webui.changes import perform
from bridgescope.webui.pages import is_htmx

bp = Blueprint("forms", __name__, url_prefix="/forms")

PROTOCOLS = ("tcp", "udp")


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

def _port(values: dict, name: str, label: str, errors: dict) -> int | None:
    raw = values.get(name, "").strip()
    if not raw:
        errors[name] = f"{label} is required."
    elif not raw.isdigit() or not 1 <= int(raw) <= 65535:
        errors[name] = f"{label} must be a number from 1 to 65535."
    else:
        return int(raw)
    return None


def _required(values: dict, name: str, label: str, errors: dict) -> str:
    raw = values.get(name, "").strip()
    if not raw:
        errors[name] = f"{label} is required."
    return raw


def forward_spec(values: dict[str, str]) -> dict[str, Any]:
    """Forward form fields -> {"container", "spec"} with spec in `docker -p` syntax."""
    errors: dict[str, str] = {}
    container = _required(values, "container", "Container", errors)
    host_port = _port(values, "host_port", "Host port", errors)
    container_port = _port(values, "container_port", "Container port", errors)
    proto = values.get("protocol", "tcp").strip().lower() or "tcp"
    if proto not in PROTOCOLS:
        errors["protocol"] = "Protocol must be tcp or udp."
    host_ip = values.get("host_ip", "").strip()
    if host_ip:
        try:
            ip = ipaddress.ip_address(host_ip)
        except ValueError:
            errors["host_ip"] = f"{host_ip!r} is not an IP address (leave empty for any)."
        else:
            host_ip = f"[{ip}]" if ip.version == 6 else str(ip)
    if errors:
        raise FieldErrors(errors)
    prefix = f"{host_ip}:" if host_ip else ""
    return {"container": container, "spec": f"{prefix}{host_port}:{container_port}/{proto}"}


def network_args(values: dict[str, str]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    args: dict[str, Any] = {"name": _required(values, "name", "Name", errors),
                            "subnet": _required(values, "subnet", "Subnet", errors),
                            "masquerade": values.get("masquerade") in ("on", "1", "true", "yes")}
    if values.get("gateway", "").strip():
        args["gateway"] = values["gateway"].strip()
    if errors:
        raise FieldErrors(errors)
    return args


def container_args(values: dict[str, str]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    args: dict[str, Any] = {"name": _required(values, "name", "Name", errors),
                            "network": _required(values, "network", "Network", errors)}
    if values.get("ip", "").strip():
        args["ip"] = values["ip"].strip()
    args["ports"] = tuple(p for p in values.get("ports", "").replace(",", " ").split() if p)
    if errors:
        raise FieldErrors(errors)
    return args


def name_args(values: dict[str, str], label: str) -> dict[str, Any]:
    errors: dict[str, str] = {}
    args: dict[str, Any] = {"name": _required(values, "name", label, errors)}
    if errors:
        raise FieldErrors(errors)
    return args


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
    "remove-network": FormKind("remove_network",
                               lambda v: {**name_args(v, "Network"),
                                          "force": v.get("force") in ("on", "1", "true")},
                               "name", "Network removed"),
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
    """The whole form round-trip: parse, preview or apply, and what to show afterwards."""
    from bridgescope.plumbing.errors import ValidationError

    view = FormView(kind, values=dict(values), prefix=values.get("form_prefix", "g"))
    spec = KINDS[kind]
    try:
        args = spec.parse(values)
        dry_run = intent != "apply"
        result = perform(spec.action, args, dry_run=dry_run)
    except FieldErrors as err:
        view.errors.update(err.errors)
        view.message = "Nothing was changed: fix the marked fields."
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
    """Names the selects offer: the networks and containers bridgescope manages on this host."""
    from bridgescope.plumbing.api import load_state

    try:
        state = load_state(host=runtime().settings.host)
    except BridgescopeError:
        return {"networks": [], "containers": [], "forwards": [], "container_objects": []}
    return {"networks": [n.name for n in state.networks],
            "containers": [c.name for c in state.containers],
            "forwards": list(state.forwards), "container_objects": list(state.containers)}


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
    return {"new_form": new_form, "protocols": PROTOCOLS}
