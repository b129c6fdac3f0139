"""Reading a JSON request body: media type, size, syntax and nesting depth checked before any field is."""

from __future__ import annotations

import json

from flask import request

from .errors import ApiError, invalid

MAX_BODY_BYTES = 16 * 1024
MAX_DEPTH = 16


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def read_json_object() -> dict:
    """The request body as a JSON object; 415, 413 or 400 problems for anything else."""
    mimetype = request.mimetype
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ApiError(
            415, "unsupported-media-type", "Unsupported media type", "Send 'Content-Type: application/json'."
        )
    raw = request.get_data(cache=True)  # werkzeug raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed-json", "Malformed JSON", "The body is not valid UTF-8 JSON.") from None
    if _depth(body) > MAX_DEPTH:
        raise ApiError(400, "malformed-json", "Malformed JSON", f"JSON nested deeper than {MAX_DEPTH} levels.")
    if not isinstance(body, dict):
        raise ApiError(400, "malformed-json", "Malformed JSON", "The body must be a JSON object.")
    # JSON may escape lone surrogates (\ud800), which no database or client can store: name the field.
    bad = sorted(str(key) for key, value in body.items() if _has_surrogate(key) or _has_surrogate(value))
    if bad:
        raise invalid({key: ["Contains an unpaired surrogate; send valid UTF-8 text."] for key in bad})
    return body


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False
