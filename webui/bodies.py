"""Request bodies: how big they may be, and JSON parsed with a bound on nesting.

The dashboard's largest legitimate request (a container with its ports) is a few hundred
bytes, so the limits are far above it and far below what would cost the server memory.
Nothing the API takes nests more than two levels; a deeper value is refused with a 400 before
any code walks it (the json module itself would raise RecursionError, a 500, near 1000 levels).
"""
from __future__ import annotations

import json
from typing import Any

from flask import Flask, Request, Response

from bridgescope.webui.auth import _deny  # the JSON-for-the-API, HTML-else error answer

MAX_BODY = 256 * 1024  # any request body, JSON or form (an urlencoded form is held whole)
MAX_FORM_FIELD = 64 * 1024  # one text field of a multipart form
MAX_FORM_PARTS = 100
MAX_DEPTH = 32


class BodyError(ValueError):
    """The body is not what the route takes; str() says why, in one line."""


def depth(value: Any) -> int:
    """How deep containers nest in a parsed JSON value (a scalar is 0, [] or {} is 1)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in children)
    return deepest


def parse_json(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """bytes -> a JSON value; BodyError when it is not JSON or nests deeper than max_depth."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise BodyError(f"the request body must be a JSON object nested at most {max_depth} deep") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise BodyError(f"the request body must be a JSON object; it is not JSON ({err})") from None
    if depth(value) > max_depth:
        raise BodyError(f"the request body must be a JSON object nested at most {max_depth} deep")
    return value


def json_body(request: Request) -> Any | None:
    """The request's JSON value, or None when it has no body. A body that is not JSON, or
    comes without a JSON Content-Type, is a BodyError; one above MAX_BODY a 413 (Flask)."""
    data = request.get_data(cache=True)
    if not data:
        return None
    if not request.is_json:
        raise BodyError("the request body must be a JSON object, sent as Content-Type: application/json")
    return parse_json(data)


def _too_large(_err) -> Response:
    return _deny(413, f"The request is too large: at most {MAX_BODY // 1024} KiB, "
                      f"{MAX_FORM_FIELD // 1024} KiB per form field, {MAX_FORM_PARTS} form parts.")


def install(app: Flask) -> None:
    """Size limits on every request body, and a readable 413 (JSON for the API, else HTML)."""
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_FORM_FIELD,
                      MAX_FORM_PARTS=MAX_FORM_PARTS)
    app.register_error_handler(413, _too_large)
