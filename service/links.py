"""The links API blueprint: create, read, list, edit and delete an account's short links."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from flask import Blueprint, Response, current_app, g, request
from psycopg.types.json import Jsonb

from . import slugs, webhooks
from .auth import require_api_key
from .cache import CachedLink
from .db import query
from .errors import ApiError, invalid
from .jsonbody import read_json_object
from .pagination import bigint, decode_cursor, encode_cursor
from .schemas import LinkCreate, LinkEdit, LinkListQuery, load_or_422
from .whatsapp import wa_me_url

bp = Blueprint("links", __name__, url_prefix="/api/v1")
GENERATED_SLUG_ATTEMPTS = 8
EDITABLE = ("phone", "message", "title", "tags", "expires_at", "max_clicks", "disabled", "lead_form")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def link_json(row: dict) -> dict:
    """The API's representation of a link row."""
    base = current_app.config["SETTINGS"].public_base_url
    return {
        "slug": row["slug"],
        "short_url": f"{base}/{row['slug']}",
        "target_url": wa_me_url(row["phone"], row["message"]),
        "phone": row["phone"],
        "message": row["message"],
        "title": row["title"],
        "tags": row["tags"],
        "expires_at": _iso(row["expires_at"]),
        "max_clicks": row["max_clicks"],
        "disabled": row["disabled"],
        "lead_form": row["lead_form"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _json_response(body: dict, status: int = 200) -> Response:
    response = current_app.response_class(
        json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json"
    )
    if status == 201:
        response.headers["Location"] = body["short_url"]
    return response


def _not_found(slug: str) -> ApiError:
    return ApiError(404, "link-not-found", "Link not found", f"No link '{slug}' in this account.")


def _jsonb(value: dict | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _insert(conn, data: dict) -> dict:
    params = {"message": None, "title": None, "tags": [], "expires_at": None, "max_clicks": None, **data}
    params["lead_form"] = _jsonb(data.get("lead_form"))
    if "slug" in data:
        row = query(conn, "insert_link", params).fetchone()
        if row is None:
            raise ApiError(409, "slug-taken", "Slug taken", f"The slug '{data['slug']}' is already in use.")
        return row
    for _ in range(GENERATED_SLUG_ATTEMPTS):
        row = query(conn, "insert_link", {**params, "slug": slugs.generate()}).fetchone()
        if row is not None:
            return row
    raise RuntimeError("could not find a free slug")  # 31^8 slugs: only reachable when nearly all are used


def _write_through(row: dict, deleted: bool = False) -> None:
    current_app.extensions["cache"].store_link(row["slug"], CachedLink.from_row(row, deleted=deleted))


def _request_hash(body: dict) -> bytes:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()


@bp.post("/links")
@require_api_key
def create_link() -> Response:
    """Create a link. 201 with the link and Location; 400, 401, 409, 413, 415, 422, 429."""
    body = read_json_object()
    data = load_or_422(LinkCreate(), body)
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise invalid({"Idempotency-Key": ["Use 1 to 255 characters."]})
    db = current_app.extensions["db"]
    with db.transaction(g.account_id) as conn:
        if idempotency_key is not None:
            request_hash = _request_hash(body)
            params = {"key": idempotency_key, "request_hash": request_hash}
            # A concurrent request with the same key waits on this insert's row lock, then sees the result.
            if query(conn, "claim_idempotency_key", params).fetchone() is None:
                earlier = query(conn, "get_idempotency_key", params).fetchone()
                if bytes(earlier["request_hash"]) != request_hash:
                    raise ApiError(
                        422,
                        "idempotency-key-reused",
                        "Idempotency-Key reused",
                        "This Idempotency-Key was used with a different body.",
                    )
                return _json_response(earlier["body"], earlier["status"])
        row = _insert(conn, data)
        link = link_json(row)
        webhooks.queue_link_created(conn, link)
        if idempotency_key is not None:
            query(conn, "finish_idempotency_key", {"key": idempotency_key, "status": 201, "body": json.dumps(link)})
    _write_through(row)  # a scan may have cached this slug as unknown before it existed
    return _json_response(link, 201)


@bp.get("/links/<slug:slug>")
@require_api_key
def get_link(slug: str) -> Response:
    """One link of the account. 200; 401, 404."""
    slug = slugs.normalize(slug)
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        row = query(conn, "get_link", {"slug": slug}).fetchone()
    if row is None:
        raise _not_found(slug)
    return _json_response(link_json(row))


@bp.patch("/links/<slug:slug>")
@require_api_key
def edit_link(slug: str) -> Response:
    """Change any editable field. 200 with the link; 400, 401, 404, 413, 415, 422."""
    slug = slugs.normalize(slug)
    changes = load_or_422(LinkEdit(), read_json_object())
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        row = query(conn, "get_link_for_update", {"slug": slug}).fetchone()
        if row is None:
            raise _not_found(slug)
        merged = {field: changes.get(field, row[field]) for field in EDITABLE}
        merged["lead_form"] = _jsonb(merged["lead_form"])
        row = query(conn, "update_link", {**merged, "slug": slug}).fetchone()
    _write_through(row)
    return _json_response(link_json(row))


@bp.delete("/links/<slug:slug>")
@require_api_key
def delete_link(slug: str) -> Response:
    """Delete a link; its redirect answers 410 from then on. 204; 401, 404."""
    slug = slugs.normalize(slug)
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        deleted = query(conn, "delete_link", {"slug": slug}).fetchone()
    if deleted is None:
        raise _not_found(slug)
    _write_through(deleted, deleted=True)
    return Response(status=204)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@bp.get("/links")
@require_api_key
def list_links() -> Response:
    """The account's links, newest first, with cursor pagination. 200; 401, 422."""
    args = load_or_422(LinkListQuery(), request.args.to_dict())
    after_created, after_id = decode_cursor(args["cursor"], bigint) if args["cursor"] else (None, None)
    params = {
        "limit": args["limit"] + 1,  # one extra row tells whether another page follows
        "tag": args["tag"],
        "q": _like_pattern(args["q"]) if args["q"] else None,
        "after_created": after_created,
        "after_id": after_id,
    }
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        rows = query(conn, "list_links", params).fetchall()
    page = rows[: args["limit"]]
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > args["limit"] else None
    return _json_response({"items": [link_json(r) for r in page], "next_cursor": next_cursor})
