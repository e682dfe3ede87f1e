"""The dashboard page, the audit page, and how any page is rendered whole or as an htmx fragment."""
from __future__ import annotations

from flask import Blueprint, render_template, request
from jinja2_fragments.flask import render_block

from bridgescope.webui.app import runtime

bp = Blueprint("pages", __name__)


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def page_or_fragment(template: str, block: str, **context) -> str:
    """One template serves both: the whole page for a browser, `block` for an htmx request."""
    if is_htmx():
        return render_block(template, block, **context)
    return render_template(template, **context)


@bp.get("/")
def dashboard() -> str:
    from bridgescope.webui.forms import form_choices

    return render_template("dashboard.html", audit=runtime().audit.recent(20), **form_choices())


@bp.get("/audit")
def audit() -> str:
    return page_or_fragment("audit.html", "entries", audit=runtime().audit.recent(200))
