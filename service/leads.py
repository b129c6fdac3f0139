"""Lead capture: the form page shown before the chat, its submission, and the leads API (list, CSV, erase)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from flask import Blueprint, Response, current_app, g, render_template, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from markupsafe import Markup
from marshmallow import fields, validate

from . import slugs, whatsapp
from .analytics import ClicksQuery, formula_safe
from .auth import require_api_key
from .cache import CachedLink
from .clicks import UTM_FIELDS
from .db import query
from .errors import ApiError
from .pagination import decode_cursor, encode_cursor, parse_uuid
from .schemas import load_or_422

bp = Blueprint("leads", __name__)
api = Blueprint("leads_api", __name__, url_prefix="/api/v1")

TOKEN_MAX_AGE = 3600
MIN_FILL_SECONDS = 2
LIMITS = {"name": 100, "phone": 64, "email": 254, "note": 1000}
EMAIL = re.compile(
    r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
LABELS = {"name": "Your name", "phone": "Your phone number", "email": "Your email", "note": "Anything to add?"}
INPUT_TYPES = {"name": "text", "phone": "tel", "email": "email"}
AUTOCOMPLETE = {"name": "name", "phone": "tel", "email": "email", "note": "off"}
LEAD_FIELDS = (
    "id",
    "created_at",
    "link",
    "name",
    "phone",
    "email",
    "note",
    "consent",
    "click_id",
    "referrer_host",
    "country",
    *UTM_FIELDS,
)
# Our own static stylesheet, inlined (no external assets) and allowed by its hash; never user data.
STYLE = Markup((Path(__file__).parent / "templates" / "lead_form.css").read_text())  # noqa: S704 (our file)
STYLE_HASH = base64.b64encode(hashlib.sha256(str(STYLE).encode()).digest()).decode()
# No script at all; the one inline style block is allowed by its hash. form-action must allow the 303 to wa.me.
CSP = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'none'; form-action 'self' https://wa.me; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
    "X-Frame-Options": "DENY",
}


def _serializer() -> URLSafeTimedSerializer:
    return current_app.extensions["form_tokens"]


def issue_token(slug: str, click_id: str | None) -> str:
    """A signed token tying the form to this slug and visit; its nonce lets it store at most one lead."""
    return _serializer().dumps({"s": slug, "c": click_id, "n": secrets.token_urlsafe(16)})


def render_form(
    link: CachedLink, slug: str, token: str, values: dict | None = None, errors: dict | None = None, status: int = 200
) -> Response:
    """The lead form page (also re-rendered with errors and the values kept)."""
    form = link.lead_form
    html = render_template(
        "lead_form.html",
        form=form,
        slug=slug,
        token=token,
        values=values or {},
        errors=errors or {},
        labels=LABELS,
        input_types=INPUT_TYPES,
        autocomplete=AUTOCOMPLETE,
        limits=LIMITS,
        style=STYLE,
    )
    return current_app.response_class(html, status=status, mimetype="text/html", headers=PAGE_HEADERS)


def _refused(detail: str) -> Response:
    return current_app.response_class(
        render_template("gone.html", detail=detail).replace("Link no longer available", "Submission refused"),
        status=403,
        mimetype="text/html",
        headers=PAGE_HEADERS,
    )


def _validate(form: dict, submitted: dict) -> tuple[dict, dict]:
    """(clean values, errors by field) for the fields this form asks for."""
    values, errors = {}, {}
    for name in form["fields"]:
        raw = submitted.get(name, "").strip()
        if any(ord(c) < 32 and c not in "\n\t" for c in raw) or any("\ud800" <= c <= "\udfff" for c in raw):
            errors[name] = "Remove the control characters."
            continue
        values[name] = raw
        if not raw:
            if name in form.get("required", []):
                errors[name] = "Please fill this in."
            continue
        if len(raw) > LIMITS[name]:
            errors[name] = f"At most {LIMITS[name]} characters."
        elif name == "phone":
            try:
                values[name] = whatsapp.normalize_phone(raw)
            except whatsapp.InvalidPhone as exc:
                errors[name] = str(exc)
        elif name == "email" and not EMAIL.match(raw):
            errors[name] = "Enter an email address like name@example.com."
    if form.get("consent") and submitted.get("consent") != "yes":
        errors["consent"] = "Please tick the box to continue."
    return values, errors


def greeting_url(link: CachedLink, name: str | None) -> str:
    """The wa.me URL with {name} in the message replaced by the visitor's name (percent-encoded with the rest)."""
    message = link.message.replace("{name}", name or "").strip() if link.message else None
    return whatsapp.wa_me_url(link.phone, message)


@bp.post("/<slug:slug>/lead")
def submit(slug: str) -> Response:
    """Store a lead and 303 to wa.me; 422 re-renders with errors; 403 for a forged, replayed or bot submission."""
    slug = slugs.normalize(slug)
    if not slugs.could_exist(slug):
        return _refused("This form is not valid.")
    try:
        claims, issued = _serializer().loads(
            request.form.get("token", ""), max_age=TOKEN_MAX_AGE, return_timestamp=True
        )
    except SignatureExpired:
        return _refused("This form has expired. Open the link again.")
    except BadSignature:
        return _refused("This form is not valid.")
    if claims.get("s") != slug:
        return _refused("This form is not valid.")
    if request.form.get("website"):  # the honeypot: hidden from people, filled by bots
        return _refused("Submission refused.")
    if time.time() - issued.timestamp() < current_app.config["SETTINGS"].lead_min_fill_seconds:
        return _refused("That was faster than a person can type. Please try again.")

    row = current_app.extensions["db"].fetch_one("resolve_link", {"slug": slug})
    link = CachedLink.from_row(row) if row else None
    if link is None or link.lead_form is None or link.gone_reason():
        return _refused("This link no longer takes submissions.")
    submitted = {k: v for k, v in request.form.items() if k in (*link.lead_form["fields"], "consent")}
    values, errors = _validate(link.lead_form, submitted)
    if errors:
        return render_form(link, slug, request.form["token"], values=submitted, errors=errors, status=422)
    lead_id = current_app.extensions["db"].fetch_one(
        "capture_lead",
        {
            "link_id": link.id,
            "nonce": claims["n"],
            "click_id": claims.get("c"),
            "name": values.get("name") or None,
            "phone": values.get("phone") or None,
            "email": values.get("email") or None,
            "note": values.get("note") or None,
            "consent": bool(link.lead_form.get("consent")),
        },
    )["lead_id"]
    if lead_id is None:
        return _refused("This form was already submitted.")
    return current_app.response_class(
        status=303, headers={"Location": greeting_url(link, values.get("name")), "Cache-Control": "private, no-store"}
    )


# --- the leads API ---------------------------------------------------------------------------------------------
class LeadsQuery(ClicksQuery):
    link = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,64}$", error="Not a slug."))


def _lead_json(row: dict) -> dict:
    return {f: (row[f].isoformat() if isinstance(row[f], datetime) else row[f]) for f in LEAD_FIELDS} | {
        "id": str(row["id"]),
        "click_id": str(row["click_id"]) if row["click_id"] else None,
    }


def _csv(db, account_id: int, params: dict) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEAD_FIELDS)
    page = {**params, "after_at": None, "after_id": None, "limit": 2000}
    while True:
        with db.transaction(account_id) as conn:
            rows = query(conn, "list_leads", page).fetchall()
        for row in rows:
            item = _lead_json(row)
            writer.writerow([formula_safe(item[f]) for f in LEAD_FIELDS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < page["limit"]:
            return
        page["after_at"], page["after_id"] = rows[-1]["created_at"], rows[-1]["id"]


def _list(link_slug: str | None) -> Response:
    args = load_or_422(LeadsQuery(), request.args.to_dict())
    link_slug = link_slug or args["link"]
    params = {
        "start": args["start_at"],
        "end": args["end_at"],
        "link": slugs.normalize(link_slug) if link_slug else None,
    }
    db = current_app.extensions["db"]
    if params["link"]:
        with db.transaction(g.account_id) as conn:
            if query(conn, "link_for_stats", {"slug": params["link"]}).fetchone() is None:
                raise ApiError(404, "link-not-found", "Link not found", f"No link '{params['link']}' in this account.")
    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        return Response(
            _csv(db, g.account_id, params),
            mimetype="text/csv",
            headers={"Content-Disposition": 'attachment; filename="leads.csv"'},
        )
    after_at, after_id = decode_cursor(args["cursor"], parse_uuid) if args["cursor"] else (None, None)
    with db.transaction(g.account_id) as conn:
        rows = query(
            conn, "list_leads", {**params, "after_at": after_at, "after_id": after_id, "limit": args["limit"] + 1}
        ).fetchall()
    page = rows[: args["limit"]]
    body = {
        "items": [_lead_json(r) for r in page],
        "next_cursor": encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > args["limit"] else None,
    }
    return current_app.response_class(json.dumps(body, ensure_ascii=False), mimetype="application/json")


@api.get("/leads")
@require_api_key
def list_leads() -> Response:
    """The account's leads, newest first, with their click's attribution; CSV on request. 200; 401, 404, 422."""
    return _list(None)


@api.get("/links/<slug:slug>/leads")
@require_api_key
def list_link_leads(slug: str) -> Response:
    """One link's leads, as GET /leads?link=<slug>. 200; 401, 404, 422."""
    return _list(slug)


@api.delete("/leads/<lead_id>")
@require_api_key
def erase_lead(lead_id: str) -> Response:
    """Erase a lead and its undelivered events (data-subject request). 204; 401, 404."""
    try:
        parsed = uuid.UUID(lead_id)
    except ValueError:
        raise ApiError(404, "lead-not-found", "Lead not found", "No such lead in this account.") from None
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        if query(conn, "erase_lead", {"id": parsed}).fetchone() is None:
            raise ApiError(404, "lead-not-found", "Lead not found", "No such lead in this account.")
    return Response(status=204)


def init_app(app) -> None:
    """The form-token signer, keyed by a secret shared through PostgreSQL by every worker and instance."""
    app.extensions["form_tokens"] = _LazySerializer(app)


class _LazySerializer:
    """Fetches the signing secret on first use, so that the app starts while PostgreSQL is away."""

    def __init__(self, app) -> None:
        self.app = app
        self._serializer: URLSafeTimedSerializer | None = None

    def _get(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            secret = self.app.extensions["db"].fetch_one("service_secret", {"name": "form-tokens"})["secret"]
            self._serializer = URLSafeTimedSerializer(bytes(secret), salt="lead-form")
        return self._serializer

    def dumps(self, obj: object) -> str:
        return self._get().dumps(obj)

    def loads(self, token: str, **kwargs):
        return self._get().loads(token, **kwargs)
