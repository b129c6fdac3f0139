"""The webhooks API (register, list, delete, delivery log) and the WhatsApp Business notification settings."""

from __future__ import annotations

import secrets
import uuid

from flask import Blueprint, Response, g
from marshmallow import RAISE, Schema, fields, validate

from ..auth import require_auth
from ..config import settings
from ..links.target import InvalidPhone, normalize_phone
from ..platform.db import database
from ..platform.errors import ApiError, invalid, not_found
from ..platform.http import json_response, load_or_422, parse_uuid, read_json_object
from ..platform.secrets import SecretsKeyMissing, secret_box
from . import store
from .addresses import address_problem
from .events import EVENTS

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")


class WebhookIn(Schema):
    """POST /api/v1/webhooks."""

    class Meta:
        unknown = RAISE

    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=2000))
    events = fields.List(
        fields.String(validate=validate.OneOf(EVENTS)),
        load_default=lambda: ["lead.created"],
        validate=validate.Length(min=1, max=len(EVENTS)),
    )


class WhatsAppIn(Schema):
    """PUT /api/v1/whatsapp."""

    class Meta:
        unknown = RAISE

    phone_number_id = fields.String(required=True, validate=validate.Regexp(r"[0-9]{5,30}\Z"))
    # Sent in an HTTP header: printable ASCII only (a "€" could not be sent at all).
    access_token = fields.String(
        required=True, validate=validate.Regexp(r"[\x21-\x7e]{10,1000}\Z", error="10-1000 printable ASCII characters.")
    )
    template = fields.String(required=True, validate=validate.Regexp(r"[a-z0-9_]{1,512}\Z"))
    language = fields.String(load_default="en_US", validate=validate.Regexp(r"[a-z]{2,3}(_[A-Z]{2})?\Z"))
    notify_number = fields.String(required=True, validate=validate.Length(max=64))


def _webhook_json(row: dict) -> dict:
    return {"id": str(row["id"]), "url": row["url"], "events": row["events"], "created_at": row["created_at"]}


def _webhook_not_found() -> ApiError:
    return not_found("webhook", "No such webhook in this account.")


def _webhook_id(value: str) -> uuid.UUID:
    try:
        return parse_uuid(value)
    except ValueError:
        raise _webhook_not_found() from None


def _sealed(secret: str) -> str:
    """secret as stored: encrypted with SECRETS_KEY, or a 503 naming SECRETS_KEY when it is not set."""
    try:
        return secret_box().seal(secret)
    except SecretsKeyMissing:
        raise ApiError(
            503,
            "secrets-key-missing",
            "Secrets cannot be stored",
            "The operator has not set SECRETS_KEY, which encrypts webhook secrets and WhatsApp tokens at rest.",
        ) from None


@bp.post("/webhooks")
@require_auth
def create_webhook() -> Response:
    """Register an endpoint; the signing secret is in this answer only. 201; 400, 401, 413, 415, 422, 503."""
    data = load_or_422(WebhookIn, read_json_object())
    scheme, rest = data["url"].split(":", 1)
    url = scheme.lower() + ":" + rest  # the scheme is case-insensitive (HTTP://…); stored as its canonical form
    problem = None if settings().webhook_allow_private else address_problem(url)
    if problem:
        raise invalid({"url": [problem]})
    secret = "whsec_" + secrets.token_urlsafe(32)
    sealed = _sealed(secret)
    with database().transaction(g.account_id) as conn:
        if store.count_webhooks(conn) >= settings().webhook_max_endpoints:
            raise invalid(
                {"url": [f"An account may register at most {settings().webhook_max_endpoints} endpoints."]},
                "Too many webhook endpoints.",
            )
        row = store.insert_webhook(conn, url, sorted(set(data["events"])), sealed)
    return json_response({**_webhook_json(row), "secret": secret}, 201)


@bp.get("/webhooks")
@require_auth
def list_webhooks() -> Response:
    """The account's endpoints (without secrets). 200; 401."""
    with database().transaction(g.account_id) as conn:
        rows = store.list_webhooks(conn)
    return json_response({"items": [_webhook_json(r) for r in rows]})


@bp.delete("/webhooks/<webhook_id>")
@require_auth
def delete_webhook(webhook_id: str) -> Response:
    """Remove an endpoint and its pending deliveries. 204; 401, 404."""
    with database().transaction(g.account_id) as conn:
        if not store.delete_webhook(conn, _webhook_id(webhook_id)):
            raise _webhook_not_found()
    return Response(status=204)


@bp.get("/webhooks/<webhook_id>/deliveries")
@require_auth
def list_deliveries(webhook_id: str) -> Response:
    """The delivery log of an endpoint, newest first, with every attempt. 200; 401, 404."""
    parsed = _webhook_id(webhook_id)
    with database().transaction(g.account_id) as conn:
        if not store.webhook_exists(conn, parsed):
            raise _webhook_not_found()
        rows = store.list_deliveries(conn, parsed)
    return json_response({"items": rows})


@bp.put("/whatsapp")
@require_auth
def put_whatsapp() -> Response:
    """Configure the WhatsApp Business notification of new leads. 200 (the token is never returned); 4xx."""
    data = load_or_422(WhatsAppIn, read_json_object())
    try:
        data["notify_number"] = normalize_phone(data["notify_number"])
    except InvalidPhone as exc:
        raise invalid({"notify_number": [str(exc)]}) from None
    data["access_token"] = _sealed(data["access_token"])
    with database().transaction(g.account_id) as conn:
        row = store.upsert_whatsapp(conn, data)
    return json_response(row)


@bp.get("/whatsapp")
@require_auth
def get_whatsapp() -> Response:
    """The WhatsApp Business settings without the access token. 200; 401, 404."""
    with database().transaction(g.account_id) as conn:
        row = store.get_whatsapp(conn)
    if row is None:
        raise ApiError(404, "whatsapp-not-configured", "Not configured", "No WhatsApp Business settings.")
    return json_response(row)


@bp.delete("/whatsapp")
@require_auth
def delete_whatsapp() -> Response:
    """Stop WhatsApp Business notifications and forget the token. 204; 401."""
    with database().transaction(g.account_id) as conn:
        store.delete_whatsapp(conn)
    return Response(status=204)
