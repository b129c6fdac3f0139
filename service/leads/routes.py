"""POST /<slug>/lead (the form's submission) and the leads API: list (JSON or CSV) and erase."""

from __future__ import annotations

import time
import uuid

from flask import Blueprint, Response, current_app, g, request
from itsdangerous import BadSignature, SignatureExpired
from marshmallow import fields, validate

from ..analytics.queries import ClicksQuery
from ..auth import require_auth
from ..config import settings
from ..links import slugs
from ..links import store as links
from ..platform.db import database
from ..platform.errors import not_found
from ..platform.http import (
    csv_response,
    decode_cursor,
    json_response,
    keyset_scan,
    load_or_422,
    page_of,
    parse_uuid,
    wants_csv,
)
from . import form, store

bp = Blueprint("leads", __name__)
api = Blueprint("leads_api", __name__, url_prefix="/api/v1")


@bp.post("/<slug:slug>/lead")
def submit(slug: str) -> Response:
    """Store a lead and 303 to wa.me; 422 re-renders with errors; 403 for a forged, replayed or bot submission."""
    slug = slugs.normalize(slug)
    if not slugs.could_exist(slug):
        return form.refused("This form is not valid.")
    if _cross_site():
        return form.refused("This form must be sent from its own page.")
    try:
        claims, issued = form.form_tokens().loads(
            request.form.get("token", ""), max_age=form.TOKEN_MAX_AGE, return_timestamp=True
        )
    except SignatureExpired:
        return form.refused("This form has expired. Open the link again.")
    except BadSignature:
        return form.refused("This form is not valid.")
    if claims.get("s") != slug:
        return form.refused("This form is not valid.")
    if request.form.get("website"):  # the honeypot: hidden from people, filled by bots
        return form.refused("Submission refused.")
    if time.time() - issued.timestamp() < settings().lead_min_fill_seconds:
        return form.refused("That was faster than a person can type. Please try again.")

    link, _ = links.find_for_redirect(database(), slug)
    if link is None or link.lead_form is None or link.gone_reason():
        return form.refused("This link no longer takes submissions.")
    submitted = {k: v for k, v in request.form.items() if k in (*link.lead_form["fields"], "consent")}
    values, errors = form.validate(link.lead_form, submitted)
    if errors:
        return form.render_form(link, slug, request.form["token"], values=submitted, errors=errors, status=422)
    consent = bool(link.lead_form.get("consent"))
    if store.capture_lead(database(), link.id, slug, claims["n"], claims.get("c"), values, consent) is None:
        return form.refused("This form was already submitted.")
    return current_app.response_class(
        status=303,
        headers={"Location": form.greeting_url(link, values.get("name")), "Cache-Control": "private, no-store"},
    )


def _cross_site() -> bool:
    """True when the browser says the POST came from another site (Sec-Fetch-Site, or an Origin that is not ours).
    The form page's Referrer-Policy makes browsers send `Origin: null`, which says nothing either way."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    ours = {request.host_url.rstrip("/"), settings().public_base_url}
    return origin is not None and origin != "null" and origin not in ours


# --- the leads API -------------------------------------------------------------------------------------------------
class LeadsQuery(ClicksQuery):
    """GET /api/v1/leads: the range, a page, and optionally one link's slug."""

    link = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,64}\Z", error="Not a slug."))


def _list(link_slug: str | None) -> Response:
    args = load_or_422(LeadsQuery, request.args.to_dict())
    link_slug = link_slug or args["link"]
    params = {
        "start": args["start_at"],
        "end": args["end_at"],
        "link": slugs.normalize(link_slug) if link_slug else None,
    }
    db, account_id = database(), g.account_id
    if params["link"]:
        with db.transaction(account_id) as conn:
            if links.get_link(conn, params["link"]) is None:
                raise not_found("link", f"No link '{params['link']}' in this account.")
    if wants_csv():

        def page(after_at, after_id, limit: int) -> list[dict]:
            # A page per transaction: a long export holds no connection between pages.
            with db.transaction(account_id) as conn:
                return store.list_leads(conn, params, after_at, after_id, limit)

        leads = keyset_scan(page, lambda lead: (lead["created_at"], lead["id"]), page_size=2000)
        return csv_response("leads.csv", store.LEAD_FIELDS, ([lead[f] for f in store.LEAD_FIELDS] for lead in leads))
    after_at, after_id = decode_cursor(args["cursor"], uuid.UUID) if args["cursor"] else (None, None)
    with db.transaction(account_id) as conn:
        rows = store.list_leads(conn, params, after_at, after_id, args["limit"] + 1)
    items, next_cursor = page_of(rows, args["limit"], lambda lead: (lead["created_at"], lead["id"]))
    return json_response({"items": items, "next_cursor": next_cursor})


@api.get("/leads")
@require_auth
def list_leads() -> Response:
    """The account's leads, newest first, with their click's attribution; CSV on request. 200; 401, 404, 422."""
    return _list(None)


@api.get("/links/<slug:slug>/leads")
@require_auth
def list_link_leads(slug: str) -> Response:
    """One link's leads, as GET /leads?link=<slug>. 200; 401, 404, 422."""
    return _list(slug)


@api.delete("/leads/<lead_id>")
@require_auth
def erase_lead(lead_id: str) -> Response:
    """Erase a lead and its undelivered events (data-subject request). 204; 401, 404."""
    lead_missing = not_found("lead", "No such lead in this account.")
    try:
        parsed = parse_uuid(lead_id)
    except ValueError:
        raise lead_missing from None
    with database().transaction(g.account_id) as conn:
        if not store.erase_lead(conn, parsed):
            raise lead_missing
    return Response(status=204)
