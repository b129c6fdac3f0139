"""Webhooks and WhatsApp Business notifications: their API, and the outbox worker (signed, retried with back-off)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Response, current_app, g
from marshmallow import RAISE, Schema, fields, validate

from .auth import require_api_key
from .db import UNAVAILABLE_ERRORS, Database, query
from .errors import ApiError, invalid
from .jsonbody import read_json_object
from .schemas import load_or_422
from .whatsapp import InvalidPhone, normalize_phone

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")
EVENTS = ("lead.created", "link.created")
# Cloud API error codes worth retrying: throttling and temporary failures. Anything else (bad token 190,
# unknown template 132001, invalid parameter 100, …) will not fix itself and fails at once.
WHATSAPP_RETRYABLE = {1, 2, 4, 17, 80007, 130429, 131000, 131016, 131056, 133004}


def address_problem(url: str) -> str | None:
    """Why url must not be called (it resolves to a private, loopback or link-local address), or None.

    Tenants choose webhook URLs; without this check they could make the service probe the internal network."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return "The host name does not resolve."
    if any(not ipaddress.ip_address(address.split("%")[0]).is_global for address in addresses):
        return "The URL points to a private, loopback or link-local address."
    return None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Chatlink-Signature value: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance: int = 300, now: float | None = None) -> bool:
    """What a receiver does: recompute the signature and refuse stale timestamps (replays)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class WebhookIn(Schema):
    class Meta:
        unknown = RAISE

    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=2000))
    events = fields.List(
        fields.String(validate=validate.OneOf(EVENTS)),
        load_default=lambda: ["lead.created"],
        validate=validate.Length(min=1, max=len(EVENTS)),
    )


class WhatsAppIn(Schema):
    class Meta:
        unknown = RAISE

    phone_number_id = fields.String(required=True, validate=validate.Regexp(r"^[0-9]{5,30}$"))
    access_token = fields.String(required=True, validate=validate.Length(min=10, max=1000))
    template = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9_]{1,512}$"))
    language = fields.String(load_default="en_US", validate=validate.Regexp(r"^[a-z]{2,3}(_[A-Z]{2})?$"))
    notify_number = fields.String(required=True, validate=validate.Length(max=64))


def _json(body: object, status: int = 200) -> Response:
    return current_app.response_class(json.dumps(body, default=str), status=status, mimetype="application/json")


def _webhook_json(row: dict) -> dict:
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "events": row["events"],
        "created_at": row["created_at"].isoformat(),
    }


def _uuid_or_404(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, "webhook-not-found", "Webhook not found", "No such webhook in this account.") from None


@bp.post("/webhooks")
@require_api_key
def create_webhook() -> Response:
    """Register an endpoint; the signing secret is in this answer only. 201; 400, 401, 413, 415, 422."""
    data = load_or_422(WebhookIn(), read_json_object())
    problem = None if current_app.config["SETTINGS"].webhook_allow_private else address_problem(data["url"])
    if problem:
        raise invalid({"url": [problem]})
    secret = "whsec_" + secrets.token_urlsafe(32)
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        row = query(
            conn, "insert_webhook", {"url": data["url"], "events": sorted(set(data["events"])), "secret": secret}
        ).fetchone()
    return _json({**_webhook_json(row), "secret": secret}, 201)


@bp.get("/webhooks")
@require_api_key
def list_webhooks() -> Response:
    """The account's endpoints (without secrets). 200; 401."""
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        rows = query(conn, "list_webhooks").fetchall()
    return _json({"items": [_webhook_json(r) for r in rows]})


@bp.delete("/webhooks/<webhook_id>")
@require_api_key
def delete_webhook(webhook_id: str) -> Response:
    """Remove an endpoint and its pending deliveries. 204; 401, 404."""
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        if query(conn, "delete_webhook", {"id": _uuid_or_404(webhook_id)}).fetchone() is None:
            raise ApiError(404, "webhook-not-found", "Webhook not found", "No such webhook in this account.")
    return Response(status=204)


@bp.get("/webhooks/<webhook_id>/deliveries")
@require_api_key
def list_deliveries(webhook_id: str) -> Response:
    """The delivery log of an endpoint, newest first, with every attempt. 200; 401, 404."""
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        if query(conn, "get_webhook", {"id": _uuid_or_404(webhook_id)}).fetchone() is None:
            raise ApiError(404, "webhook-not-found", "Webhook not found", "No such webhook in this account.")
        rows = query(conn, "list_deliveries", {"webhook_id": webhook_id}).fetchall()
    return _json({"items": rows})


@bp.put("/whatsapp")
@require_api_key
def put_whatsapp() -> Response:
    """Configure the WhatsApp Business notification of new leads. 200 (the token is never returned); 4xx."""
    data = load_or_422(WhatsAppIn(), read_json_object())
    try:
        data["notify_number"] = normalize_phone(data["notify_number"])
    except InvalidPhone as exc:
        raise ApiError(
            422, "invalid-data", "Invalid data", "Some fields are invalid.", errors={"notify_number": [str(exc)]}
        ) from None
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        row = query(conn, "upsert_whatsapp", data).fetchone()
    return _json(row)


@bp.get("/whatsapp")
@require_api_key
def get_whatsapp() -> Response:
    """The WhatsApp Business settings without the access token. 200; 401, 404."""
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        row = query(conn, "get_whatsapp").fetchone()
    if row is None:
        raise ApiError(404, "whatsapp-not-configured", "Not configured", "No WhatsApp Business settings.")
    return _json(row)


@bp.delete("/whatsapp")
@require_api_key
def delete_whatsapp() -> Response:
    """Stop WhatsApp Business notifications and forget the token. 204; 401."""
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        query(conn, "delete_whatsapp")
    return Response(status=204)


def queue_link_created(conn, link: dict) -> None:
    """Queue link.created for the account's subscribed endpoints, in the transaction that created the link."""
    event_id = uuid.uuid4()
    payload = {"id": str(event_id), "type": "link.created", "created_at": link["created_at"], "data": link}
    query(conn, "queue_link_created", {"event_id": event_id, "payload": json.dumps(payload, default=str)})


class Deliverer:
    """Posts due outbox rows: webhooks signed, WhatsApp through the Cloud API; retries with exponential back-off."""

    def __init__(
        self,
        db: Database,
        *,
        whatsapp_base: str,
        timeout: float,
        max_attempts: int,
        retry_base_seconds: float,
        allow_private: bool = False,
        batch: int = 20,
    ) -> None:
        self.db = db
        self.allow_private = allow_private
        self.whatsapp_base = whatsapp_base.rstrip("/")
        self.timeout, self.max_attempts, self.retry_base = timeout, max_attempts, retry_base_seconds
        self.batch = batch
        self.http = requests.Session()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_once(self) -> int:
        """Lease and attempt every due delivery (up to a batch); return how many were attempted."""
        with self.db.pool.connection() as conn:
            due = query(conn, "claim_deliveries", {"limit": self.batch, "lease": int(self.timeout * 3 + 30)}).fetchall()
        for row in due:
            self._attempt(row)
        return len(due)

    def _attempt(self, row: dict) -> None:
        started = time.monotonic()
        try:
            if row["url"]:
                delivered, status, error, retryable = self._post_webhook(row)
            elif row["phone_number_id"]:
                delivered, status, error, retryable = self._post_whatsapp(row)
            else:  # the WhatsApp settings were removed after the event was queued
                delivered, status, error, retryable = False, None, "WhatsApp Business is no longer configured", False
        except requests.RequestException as exc:
            delivered, status, error, retryable = False, None, type(exc).__name__, True
        attempts = row["attempts"] + 1
        retry_at = None
        if not delivered and retryable and attempts < self.max_attempts:
            delay = min(self.retry_base * 2 ** (attempts - 1), 3600) * random.uniform(0.8, 1.2)  # noqa: S311
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        with self.db.pool.connection() as conn:
            query(
                conn,
                "finish_delivery",
                {
                    "id": row["id"],
                    "delivered": delivered,
                    "status": status,
                    "error": (error or "")[:500] or None,
                    "retry_at": retry_at,
                    "duration_ms": int((time.monotonic() - started) * 1000),
                },
            )

    def _post_webhook(self, row: dict) -> tuple[bool, int | None, str | None, bool]:
        problem = None if self.allow_private else address_problem(row["url"])
        if problem:  # checked again at each call: DNS may have changed since registration
            return False, None, problem, False
        body = json.dumps(row["payload"], separators=(",", ":"), default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Chatlink-Webhooks/1",
            "X-Chatlink-Event-Id": str(row["event_id"]),
            "X-Chatlink-Event-Type": row["event_type"],
            "X-Chatlink-Signature": sign(row["secret"], int(time.time()), body),
        }
        response = self.http.post(row["url"], data=body, headers=headers, timeout=self.timeout, allow_redirects=False)
        ok = 200 <= response.status_code < 300
        # 4xx other than timeouts/throttling mean the receiver refuses this event; keep trying anyway (it may be
        # deploying), up to the attempt limit — a receiver that is down must still get every event.
        return ok, response.status_code, None if ok else f"HTTP {response.status_code}", True

    def _post_whatsapp(self, row: dict) -> tuple[bool, int, str | None, bool]:
        lead = row["payload"]["data"]
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": row["notify_number"].lstrip("+"),
            "type": "template",
            "template": {
                "name": row["template"],
                "language": {"code": row["language"]},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": lead.get("name") or "-"},
                            {"type": "text", "text": lead.get("phone") or lead.get("email") or "-"},
                            {"type": "text", "text": lead.get("link") or "-"},
                        ],
                    }
                ],
            },
        }
        response = self.http.post(
            f"{self.whatsapp_base}/{row['phone_number_id']}/messages",
            json=body,
            timeout=self.timeout,
            headers={"Authorization": f"Bearer {row['access_token']}"},
            allow_redirects=False,
        )
        if response.status_code == 200:
            return True, 200, None, False
        try:
            error = response.json()["error"]
            code, message = int(error.get("code", 0)), str(error.get("message", ""))[:200]
        except (ValueError, KeyError, TypeError):
            code, message = 0, "unreadable error body"
        retryable = response.status_code >= 500 or response.status_code == 429 or code in WHATSAPP_RETRYABLE
        return False, response.status_code, f"code {code}: {message}", retryable

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-deliverer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.timeout + 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.deliver_once() == 0:
                    self._stop.wait(1)
            except UNAVAILABLE_ERRORS as exc:
                log.warning("outbox deliverer waiting for PostgreSQL: %s", type(exc).__name__)
                self._stop.wait(2)
            except Exception:
                log.exception("outbox deliverer failed; retrying")
                self._stop.wait(2)
