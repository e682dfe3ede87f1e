"""Workshop mode: the doctor panel, the guided walk through `docker run -p`, the packet path.

/workshop/doctor   findings for the dashboard's host, badged on its live graph
/workshop/walk     the walk lab growing step by step (one click per step, the blog's wrong
                   turns and their fixes, reset), its own live graph, doctor and packet path;
                   ?follow=1 is the attendees' view (no controls, follows the instructor),
                   ?present=1 the large, high-contrast projector view.
Progress lives in the walk lab's file, so a second `bridgescope serve --read-only` pointed at
the same lab serves attendees a view they cannot change.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from jinja2_fragments.flask import render_block

from bridgescope.collector.doctor import diagnose
from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.model import to_plain
from bridgescope.collector.packetpath import namespace_by_name, trace_live
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.lab import probe as lab_probe
from bridgescope.plumbing.lab import walklab
from bridgescope.plumbing.lab.walk import WalkStep, step_index
from bridgescope.plumbing.lab.walklab import Outcome, WalkLab
from bridgescope.webui import verdicts
from bridgescope.webui.app import runtime
from bridgescope.webui.audit import scrub
from bridgescope.webui.labsource import LabSource
from bridgescope.webui.stream import open_stream

bp = Blueprint("workshop", __name__, url_prefix="/workshop")

# Where a packet can be sent in the walk lab: (label, address, port).
DESTINATIONS = (
    ("the host's published port 8080", walklab.HOST_UPLINK, 8080),
    ("the fake internet", walklab.INTERNET, 80),
    ("the container directly", "172.17.0.2", 80),
)


class Workshop:
    """Per app: the walk lab, its live source, and the last action's outcome."""

    def __init__(self, prefix: str):
        self.lab = WalkLab(prefix)
        self.lock = threading.Lock()  # one walk action at a time
        self.last: Outcome | None = None
        self._source: LabSource | None = None

    @property
    def source(self) -> LabSource:
        with self.lock:
            if self._source is None:
                self._source = LabSource(self.lab.names.host, self.lab.names.prefix).start()
            return self._source

    def findings(self):
        return findings_of(self.source.snapshot) if self.lab.is_up() else ()


_memo: dict[int, tuple] = {}  # id(snapshot) -> (snapshot, findings); holding it keeps the id valid
_memo_lock = threading.Lock()


def findings_of(snap) -> tuple:
    """diagnose() once per snapshot: the pages poll the findings while nothing changes, and
    every source replaces its snapshot object when anything does."""
    with _memo_lock:
        hit = _memo.get(id(snap))
        if hit is not None and hit[0] is snap:
            return hit[1]
    found = diagnose(snap)
    with _memo_lock:
        while len(_memo) >= 4:  # the dashboard's and the walk lab's, old and new
            _memo.pop(next(iter(_memo)))
        _memo[id(snap)] = (snap, found)
    return found


_creating = threading.Lock()


def workshop() -> Workshop:
    ext = current_app.extensions
    with _creating:
        if "bridgescope_workshop" not in ext:
            ext["bridgescope_workshop"] = Workshop(os.environ.get("BRIDGESCOPE_WALK_PREFIX",
                                                                  walklab.DEFAULT_PREFIX))
    return ext["bridgescope_workshop"]


# ---- doctor ------------------------------------------------------------------------------

@bp.get("/")
def index() -> Response:
    return redirect(url_for("workshop.walk"))


@bp.get("/doctor")
def doctor() -> str:
    """?lab=1: the walk lab instead of the dashboard's host (the room's shared example)."""
    lab = request.args.get("lab") == "1"
    if lab:
        findings = workshop().findings()
        urls = dict(events=url_for("workshop.walk_events"), findings_url=url_for("workshop.doctor_json", lab=1),
                    details=url_for("workshop.walk_details", element_id=""))
    else:
        findings = dashboard_findings()
        urls = dict(events=url_for("stream.events"), findings_url=url_for("workshop.doctor_json"),
                    details=url_for("details.panel", element_id=""))
    return render_template("workshop_doctor.html", findings=findings, present=_present(), lab=lab,
                           **urls)


@bp.get("/doctor.json")
def doctor_json() -> Response:
    if request.args.get("lab"):
        ws = workshop()
        findings = ws.findings()
        # the walk lab's findings about steps still to come are "not built yet", not problems
        progress = ws.lab.progress() if ws.lab.is_up() else {}
        later = not_built_yet(ws.lab.steps, progress) if ws.lab.next_step() else frozenset()
        return jsonify({"findings": [{**to_plain(f), "later": f.id in later} for f in findings]})
    findings = dashboard_findings()
    return jsonify({"findings": to_plain(findings)})


def dashboard_findings() -> tuple:
    """The background worker's findings (with the listeners and the owned tags it read),
    so the page, the nav count and the badges say the same."""
    result = verdicts.for_source(runtime().source).latest()
    return result.findings if result is not None else findings_of(runtime().source.snapshot)


@bp.get("/doctor/counts.json")
def doctor_counts() -> Response:
    """The nav link's count on pages without a live stream: the stream's "doctor" event."""
    result = verdicts.for_source(runtime().source).latest()
    if result is None:
        return jsonify({"counts": {}, "findings": [], "verdicts": {}, "checked_at": None})
    return jsonify(verdicts.event_of(result))


# ---- the walk ----------------------------------------------------------------------------

def _present() -> bool:
    return request.args.get("present") == "1"


def _follow() -> bool:
    return request.args.get("follow") == "1" or bool(current_app.config.get("READ_ONLY"))


def not_built_yet(steps: Iterable[WalkStep], progress: dict[str, str]) -> frozenset[str]:
    """Finding ids that only say a step still to come is not done: while walking, the doctor
    shows these greyed as "not built yet", not as errors."""
    return frozenset(f for s in steps if progress.get(s.key) in ("pending", "failed") for f in s.settles)


def split_findings(findings: Iterable, steps: Iterable[WalkStep], progress: dict[str, str]) -> tuple[list, list]:
    """(real findings, findings about steps not yet done)."""
    later = not_built_yet(steps, progress)
    found = list(findings)
    return [f for f in found if f.id not in later], [f for f in found if f.id in later]


def _panel_context(error: str | None = None, error_step: str | None = None) -> dict:
    """error_step: the step the error belongs to (shown there); else it shows at the top."""
    ws = workshop()
    up = ws.lab.is_up()
    progress = ws.lab.progress() if up else {s.key: "pending" for s in ws.lab.steps}
    findings, later = split_findings(ws.findings(), ws.lab.steps, progress)
    done = sum(1 for s in ws.lab.steps if progress[s.key] in ("done", "wrong"))
    next_step = ws.lab.next_step() if up else None
    return dict(steps=ws.lab.steps, progress=progress, next_step=next_step,
                next_number=step_index(ws.lab.steps, next_step) + 1 if next_step else None,
                findings=findings, later_findings=later, lab_up=up, last=ws.last, error=error,
                error_step=error_step, follow=_follow(), names=ws.lab.names,
                destinations=DESTINATIONS, done_count=done, host_netns=ws.lab.names.host)


@bp.get("/walk")
def walk() -> str:
    return render_template("workshop_walk.html", present=_present(), **_panel_context())


@bp.get("/walk/panel")
def walk_panel() -> str:
    return render_block("workshop_walk.html", "panel", **_panel_context())


@bp.get("/walk/state")
def walk_state() -> Response:
    ws = workshop()
    return jsonify({"up": ws.lab.is_up(), "progress": ws.lab.progress(), "next": ws.lab.next_step(),
                    "version": ws.source.version, "findings": to_plain(ws.findings())})


def _audit(action: str, commands: Iterable[str], result: str, ok: bool) -> None:
    """Walk actions change the kernel and start processes: audited like every other change."""
    info = {"method": request.method, "path": request.path, "action": action,
            "args": scrub(request.form.items(multi=True))}
    runtime().audit.record(request.remote_addr or "?", info, commands, result, ok=ok)


def _message(err: BridgescopeError) -> str:
    return getattr(err, "message", str(err))


@bp.post("/walk/step/<key>/<action>")
def walk_action(key: str, action: str) -> tuple[str, int] | str:
    ws = workshop()
    run = {"apply": ws.lab.apply, "wrong": ws.lab.wrong_turn, "fix": ws.lab.fix}.get(action)
    if run is None:
        abort(404, f"no walk action {action!r}")
    try:
        with ws.lock:
            try:
                outcome = ws.last = run(key)
            except BridgescopeError as err:
                _audit(f"walk-{action}", getattr(err, "commands", ()), f"error: {_message(err)}", False)
                raise
            failed = next((r for r in outcome.ran if not r.ok), None)
            _audit(f"walk-{action}", [r.command for r in outcome.ran],
                   f"error: step {key}: {failed.output}" if failed else f"ok: step {key}: {action}",
                   outcome.ok)
    except BridgescopeError as err:
        at = key if any(s.key == key for s in ws.lab.steps) else None  # else it shows at the top
        return render_block("workshop_walk.html", "panel", **_panel_context(_message(err), at)), 400
    finally:
        ws.source.refresh()
    return render_block("workshop_walk.html", "panel", **_panel_context())


def _lifecycle(action: str, change: Callable[[WalkLab], tuple[str, ...]]) -> tuple[str, int] | str:
    """Reset or remove the walk lab, audited with what it ran; a failure shows in the panel."""
    ws = workshop()
    try:
        with ws.lock:
            ws.last = None
            try:
                commands = change(ws.lab)
            except (BridgescopeError, OSError) as err:
                message = _message(err) if isinstance(err, BridgescopeError) else str(err)
                _audit(action, getattr(err, "commands", ()), f"error: {message}", False)
                return render_block("workshop_walk.html", "panel", **_panel_context(message)), 500
            _audit(action, commands, f"ok: {action} of the walk lab {ws.lab.names.prefix}", True)
    finally:
        ws.source.refresh()
    return render_block("workshop_walk.html", "panel", **_panel_context())


@bp.post("/walk/reset")
def walk_reset() -> tuple[str, int] | str:
    return _lifecycle("walk-reset", WalkLab.reset)


@bp.post("/walk/down")
def walk_down() -> tuple[str, int] | str:
    return _lifecycle("walk-down", WalkLab.down)


def handout_markdown(steps: Iterable[WalkStep], prefix: str) -> str:
    """The walk as a handout: every step's commands and why, and the blog's wrong turns."""
    out = ["# docker run -p 8080:80, step by step", "",
           f"Built in the walk lab `{prefix}` by bridgescope; every command runs in the lab's host "
           "namespace, exactly as shown.", ""]
    for n, step in enumerate(steps, 1):
        out += [f"## {n}. {step.title}", "", "```sh", *(c.text for c in step.commands), "```", "", step.why, ""]
        if step.wrong_turn:
            wt = step.wrong_turn
            out += ["**The blog's wrong turn:**", "", "```sh", *(c.text for c in wt.commands), "```", "",
                    wt.mistake, "", f"What breaks: {wt.breaks} The doctor says `{wt.finding}`. The fix:",
                    "", "```sh", *(c.text for c in wt.fix), "```", ""]
    return "\n".join(out)


@bp.get("/walk/handout.md")
def walk_handout() -> Response:
    ws = workshop()
    return Response(handout_markdown(ws.lab.steps, ws.lab.names.prefix), mimetype="text/markdown",
                    headers={"Content-Disposition": 'attachment; filename="docker-run-p-walk.md"'})


@bp.get("/walk/events")
def walk_events() -> Response:
    """The walk lab's graph as Server-Sent Events, in the dashboard stream's format."""
    return open_stream(lambda: workshop().source)


@bp.get("/walk/details/<path:element_id>")
def walk_details(element_id: str) -> str:
    ws = workshop()
    snap = ws.source.snapshot
    element = next((e for e in ws.source.elements if e["data"]["id"] == element_id), None)
    if element is None:
        abort(404, f"no element {element_id!r} in the walk lab (it may just have gone)")
    concerning = [f for f in ws.findings() if element_id in f.objects]
    iface = snap.interface(element_id)
    ns = snap.namespace(element_id) or (snap.namespace(iface.netns) if iface else None)
    return render_template("_workshop_details.html", data=element["data"], iface=iface, ns=ns,
                           findings=concerning)


# ---- packet path -------------------------------------------------------------------------

@bp.post("/walk/path")
def walk_path() -> tuple[Response, int] | Response:
    ws = workshop()
    try:
        source_name, dst, port, send_probe = _path_form(ws)
        snap = ws.source.snapshot
        src = namespace_by_name(snap, source_name)
        if src is None:
            raise ValidationError("source", f"{source_name} does not exist in the lab yet")
        path = trace_live(snap, src.id, dst, port)
        body = {"steps": [{"kind": s.kind, "text": s.text, "elements": list(s.elements),
                           "rules": [r.text for r in s.rules]} for s in path.steps],
                "elements": list(path.elements), "delivered": path.delivered_to is not None,
                "verdict": dict(zip(("outcome", "reason"), path.outcome, strict=True)),
                "delivered_to": (snap.namespace(path.delivered_to).name if path.delivered_to else None),
                "final": to_plain(path.final)}
        if send_probe:
            body["probe"] = _probe(ws, src, source_name, dst, port)
        return jsonify(body)
    except ValidationError as err:
        return jsonify({"error": str(err), "field": err.field}), 400
    except BridgescopeError as err:
        return jsonify({"error": str(err)}), 400


def _probe(ws: Workshop, src, source_name: str, dst: str, port: int) -> dict:
    """A real connection inside the lab: it moves counters and conntrack, so it is audited."""
    command = (f"ip netns exec {source_name} curl -s -m {lab_probe.TIMEOUT:g} http://{dst}:{port}/",)
    try:
        result = lab_probe.send(ws.lab.names.host, src.id, dst, port, prefix=ws.lab.names.prefix)
    except BridgescopeError as err:
        _audit("walk-probe", command, f"error: {_message(err)}", False)
        raise
    _audit("walk-probe", command, f"ok: {'connected' if result.connected else 'no connection'}: "
           f"{result.reply}", True)
    return {"connected": result.connected, "reply": result.reply, "outcome": lab_probe.outcome(result),
            "moved": [{"chain": r.chain, "text": r.text, "packets": d} for r, d in result.moved]}


def _path_form(ws: Workshop) -> tuple[str, str, int, bool]:
    names = ws.lab.names
    sources = {"container": names.container, "client": names.client, "host": names.host}
    source = sources.get(request.form.get("source", ""))
    if source is None:
        raise ValidationError("source", "choose the container, the client or the host")
    choice = request.form.get("destination", "")
    # ASCII digits only: str.isdigit() also accepts '²', which int() then refuses
    if not re.fullmatch(r"[0-9]{1,3}", choice) or not int(choice) < len(DESTINATIONS):
        raise ValidationError("destination", "choose one of the listed destinations")
    _, dst, port = DESTINATIONS[int(choice)]
    probe = request.form.get("probe", "0")
    if probe not in ("0", "1"):
        raise ValidationError("probe", "probe is 1 (send a real probe) or 0")
    return source, dst, port, probe == "1"
