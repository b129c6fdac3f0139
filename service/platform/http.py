"""HTTP plumbing every API view shares: JSON in and out, load-or-422, keyset cursors, formula-safe CSV streams."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from flask import Response, current_app, request
from marshmallow import Schema, ValidationError, fields

from .errors import ApiError, invalid

K = TypeVar("K")
T = TypeVar("T")
MAX_BODY_BYTES = 16 * 1024
MAX_DEPTH = 16
BIGINT_MAX = 2**63 - 1
CSV_ROWS_PER_CHUNK = 1000


# --- JSON out ----------------------------------------------------------------------------------------------------
def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # UUIDs, decimals


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (UTF-8 as is, datetimes in ISO 8601)."""
    return current_app.response_class(
        json.dumps(body, ensure_ascii=False, default=_plain),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


# --- JSON in -----------------------------------------------------------------------------------------------------
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
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):
        # A chunked body has no length to refuse up front, and werkzeug would silently cut it at
        # MAX_CONTENT_LENGTH (a "malformed" JSON): read one byte past the limit to tell.
        raw = request.environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "body-too-large", "Body too large", f"The body is over {MAX_BODY_BYTES} bytes.")
    else:
        raw = request.get_data(cache=True)  # werkzeug raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed-json", "Malformed JSON", "The body is not valid UTF-8 JSON.") from None
    if _depth(body) > MAX_DEPTH:
        raise ApiError(400, "malformed-json", "Malformed JSON", f"JSON nested deeper than {MAX_DEPTH} levels.")
    if not isinstance(body, dict):
        raise ApiError(400, "malformed-json", "Malformed JSON", "The body must be a JSON object.")
    return body


def _unstorable(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


_SCHEMAS: dict[type[Schema], Schema] = {}


def schema_instance(schema_class: type[Schema]) -> Schema:
    """The one shared instance of a schema class: building a schema deep-copies its declared fields, which cost
    about as much as loading a body with it. A schema holds no per-load state, so threads may share it."""
    schema = _SCHEMAS.get(schema_class)
    if schema is None:
        schema = _SCHEMAS.setdefault(schema_class, schema_class())
    return schema


def load_or_422(schema: Schema | type[Schema], data: dict) -> dict:
    """schema.load(data) (given a schema class, with its shared instance), or a 422 problem naming every invalid
    field."""
    if isinstance(schema, type):
        schema = schema_instance(schema)
    # JSON may escape lone surrogates (\ud800) and NUL (\u0000), and a query string may carry them too; no
    # PostgreSQL text (and no client) can hold them: refused for every body and query, naming the field.
    bad = sorted(str(key) for key, value in data.items() if _unstorable(key) or _unstorable(value))
    if bad:
        raise invalid({key: ["Contains NUL or an unpaired surrogate; send valid UTF-8 text."] for key in bad})
    try:
        return schema.load(data)
    except ValidationError as exc:
        errors = {field: msgs if isinstance(msgs, list) else [str(msgs)] for field, msgs in exc.messages.items()}
        raise invalid(errors) from None


class StrictBoolean(fields.Boolean):
    """JSON true or false only: no 1, "yes" or "on"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


# --- keyset pages ------------------------------------------------------------------------------------------------
def encode_cursor(at: datetime, key: object) -> str:
    """The opaque cursor that continues after a row created at `at` with id `key` (newest-first lists)."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode()


def decode_cursor(cursor: str, parse_key: Callable[[str], K]) -> tuple[datetime, K]:
    """(timestamp, id) of a cursor this API issued; a 422 naming `cursor` for anything else."""
    try:
        at, _, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), parse_key(key)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise invalid({"cursor": ["Not a cursor this API returned."]}) from None


UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def parse_uuid(text: str) -> uuid.UUID:
    """A UUID in its canonical 8-4-4-4-12 form only (not urn:uuid:…, {…} or bare hex), or ValueError."""
    if not UUID_PATTERN.match(text):
        raise ValueError("not a canonical UUID")
    return uuid.UUID(text)


def bigint(text: str) -> int:
    """A PostgreSQL bigint, or ValueError."""
    value = int(text)
    if not 0 < value <= BIGINT_MAX:
        raise ValueError("out of range")
    return value


def page_of(rows: list[T], limit: int, position: Callable[[T], tuple[datetime, object]]) -> tuple[list[T], str | None]:
    """(the page, the next cursor or None) from rows fetched with limit + 1 (the extra row tells a page follows)."""
    page = rows[:limit]
    return page, encode_cursor(*position(page[-1])) if len(rows) > limit else None


def keyset_scan(
    fetch: Callable[[Any, Any, int], list[T]], position: Callable[[T], tuple], page_size: int = 5000
) -> Iterator[T]:
    """Every row of a newest-first keyset query, a page per fetch(after_at, after_key, limit) call; position(row)
    is the row's (at, key). The next page is fetched on another thread while this one is consumed, so the
    database and the consumer (a CSV writer) work at the same time."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyset") as prefetch:
        upcoming = prefetch.submit(fetch, None, None, page_size)
        while True:
            rows = upcoming.result()
            full = len(rows) == page_size
            if full:
                upcoming = prefetch.submit(fetch, *position(rows[-1]), page_size)
            yield from rows
            if not full:
                return


# --- CSV ---------------------------------------------------------------------------------------------------------
# Spreadsheets evaluate a cell whose first meaningful character is one of these (full-width forms included:
# some programs fold them); they skip spaces, invisible characters and quotes before it (LibreOffice with
# "trim spaces" evaluates " =1+1").
FORMULA_STARTS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")
SKIPPED_BEFORE_FORMULA = frozenset("'\"\u00a0\u200b\u200c\u200d\u2060\ufeff") | frozenset(" \t\r\n\f\v")


def formula_safe(value: object) -> str:
    """A CSV cell spreadsheet programs will not evaluate: when its first character that is not a space, an
    invisible character or a quote starts a formula (or it starts with tab/CR), it gets a quote first.
    Booleans are written true/false, as the JSON says them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "" if value is None else str(value)
    first = text[:1]
    if first in ("\t", "\r"):
        return "'" + text
    if first not in SKIPPED_BEFORE_FORMULA and not first.isspace():  # most cells: decided by the first character
        return "'" + text if first in FORMULA_STARTS else text
    meaningful = next((char for char in text if char not in SKIPPED_BEFORE_FORMULA and not char.isspace()), "")
    return "'" + text if meaningful in FORMULA_STARTS else text


def wants_csv() -> bool:
    """True when the client prefers text/csv to JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


def _csv_cell(value: object) -> object:
    """A cell as csv.writer should see it: text made formula-safe; values of our own types (ids, times, flags)
    cannot start a formula and are written as they are."""
    kind = value.__class__
    if kind is str or kind is bool:
        return formula_safe(value)
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else value


def csv_download(filename: str, chunks: Iterable[bytes]) -> Response:
    """Stream CSV already written elsewhere (PostgreSQL's COPY, made formula-safe there) as a download."""
    return Response(chunks, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def csv_response(
    filename: str, header: Sequence[str], rows: Iterable[Sequence[object]], pick: Sequence[int] | None = None
) -> Response:
    """Stream rows (or the cells at the positions pick names) as formula-safe CSV, in chunks, without holding the
    whole export in memory."""
    pick = range(len(header)) if pick is None else pick

    def chunks() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for n, row in enumerate(rows, 1):
            writer.writerow([_csv_cell(row[i]) for i in pick])
            if n % CSV_ROWS_PER_CHUNK == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return csv_download(filename, chunks())
