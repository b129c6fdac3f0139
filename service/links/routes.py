"""The links API: create, read, list, edit and delete an account's short links."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from flask import Blueprint, Response, g, request

from ..auth import require_auth_in_transaction
from ..config import settings
from ..platform.db import database
from ..platform.errors import ApiError, invalid, not_found
from ..platform.http import bigint, decode_cursor, json_response, load_or_422, page_of, read_json_object
from ..webhooks import events
from . import slugs, store
from .model import Link
from .schemas import LinkCreate, LinkEdit, LinkListQuery
from .store import link_cache

bp = Blueprint("links", __name__, url_prefix="/api/v1")


def _api(link: Link) -> dict:
    return link.to_api(settings().public_base_url)


def _link_not_found(slug: str) -> ApiError:
    return not_found("link", f"No link '{slug}' in this account.")


@bp.post("/links")
@require_auth_in_transaction
def create_link() -> Response:
    """Create a link. 201 with the link and Location; 400, 401, 409, 413, 415, 422, 429."""
    body = read_json_object()
    data = load_or_422(LinkCreate, body)
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise invalid({"Idempotency-Key": ["Use 1 to 255 characters."]})
    with database().transaction(g.account_id) as conn:
        if idempotency_key is not None:
            body_hash = store.request_hash(body)
            earlier = store.claim_idempotency_key(conn, idempotency_key, body_hash)
            if earlier is not None:
                if earlier["request_hash"] != body_hash:
                    raise ApiError(
                        422,
                        "idempotency-key-reused",
                        "Idempotency-Key reused",
                        "This Idempotency-Key was used with a different body.",
                    )
                replay = _created(earlier["body"], earlier["status"])
                replay.headers["Idempotent-Replayed"] = "true"  # exposed to browser front ends by CORS
                return replay
        link = store.insert_link(conn, data)
        representation = _api(link)
        events.queue_link_created(conn, representation)
        if idempotency_key is not None:
            store.finish_idempotency_key(conn, idempotency_key, 201, representation)
    link_cache().store(link)  # a scan may have cached this slug as unknown before it existed
    return _created(representation, 201)


def _created(body: dict, status: int) -> Response:
    return json_response(body, status, headers={"Location": body["short_url"]} if status == 201 else None)


@bp.get("/links/<slug:slug>")
@require_auth_in_transaction
def get_link(slug: str) -> Response:
    """One link of the account. 200; 401, 404."""
    return json_response(_api(_live(slug, lambda slug: store.read_link(database(), g.account_id, slug))))


@bp.patch("/links/<slug:slug>")
@require_auth_in_transaction
def edit_link(slug: str) -> Response:
    """Change any editable field. 200 with the link; 400, 401, 404, 413, 415, 422."""
    changes = load_or_422(LinkEdit, read_json_object())
    link = _in_account(slug, lambda conn, slug: store.update_link(conn, slug, changes))
    link_cache().store(link)
    return json_response(_api(link))


@bp.delete("/links/<slug:slug>")
@require_auth_in_transaction
def delete_link(slug: str) -> Response:
    """Delete a link; its redirect answers 410 from then on. 204; 401, 404."""
    link_cache().store(_in_account(slug, store.delete_link))
    return Response(status=204)


def _in_account(slug: str, action: Callable[[psycopg.Connection, str], Link | None]) -> Link:
    """action(conn, slug) in a transaction of the request's account; 404 when it finds no live link."""

    def in_transaction(slug: str) -> Link | None:
        with database().transaction(g.account_id) as conn:
            return action(conn, slug)

    return _live(slug, in_transaction)


def _live(slug: str, find: Callable[[str], Link | None]) -> Link:
    """find(the normalised slug), or 404 when it finds no live link."""
    slug = slugs.normalize(slug)
    link = find(slug)
    if link is None:
        raise _link_not_found(slug)
    return link


@bp.get("/links")
@require_auth_in_transaction
def list_links() -> Response:
    """The account's links, newest first, with cursor pagination. 200; 401, 422."""
    args = load_or_422(LinkListQuery, request.args.to_dict())
    after = decode_cursor(args["cursor"], bigint) if args["cursor"] else None
    with database().transaction(g.account_id, read_only=True) as conn:
        links = store.list_links(conn, limit=args["limit"] + 1, tag=args["tag"], text=args["q"], after=after)
    page, next_cursor = page_of(links, args["limit"], lambda link: (link.created_at, link.id))
    return json_response({"items": [_api(link) for link in page], "next_cursor": next_cursor})
