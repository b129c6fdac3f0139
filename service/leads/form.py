"""The lead form page: its signed single-use token, rendering with a strict CSP, and checking what was sent."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from pathlib import Path

from flask import Response, current_app, render_template
from markupsafe import Markup

from ..links import target
from ..links.model import Link
from ..platform.secrets import Signer

TOKEN_MAX_AGE = 3600
LIMITS = {"name": 100, "phone": 64, "email": 254, "note": 1000}
EMAIL = re.compile(
    r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z"
)
LABELS = {"name": "Your name", "phone": "Your phone number", "email": "Your email", "note": "Anything to add?"}
INPUT_TYPES = {"name": "text", "phone": "tel", "email": "email"}
AUTOCOMPLETE = {"name": "name", "phone": "tel", "email": "email", "note": "off"}
# Our own static stylesheet, inlined (no external assets) and allowed by its hash (see page()); never user data.
STYLE = Markup((Path(__file__).parents[1] / "templates" / "lead_form.css").read_text())  # noqa: S704 (our file)
# No script at all; the page's own inline style blocks are allowed by their hashes. form-action must allow the 303
# to wa.me.
CSP = (
    "default-src 'none'; style-src {styles}; img-src 'none'; form-action 'self' https://wa.me; "
    "frame-ancestors 'none'; base-uri 'none'"
)
STYLE_BLOCK = re.compile(r"<style>(.*?)</style>", re.DOTALL)
PHONE_ERROR = "Enter your phone number with its country code, e.g. +55 11 98765-4321."
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
    "X-Frame-Options": "DENY",
}


def form_tokens() -> Signer:
    """The signer of form tokens, keyed by a secret every worker and instance shares through PostgreSQL."""
    return current_app.extensions["chatlink.form_tokens"]


def issue_token(slug: str, click_id: str | None) -> str:
    """A signed token tying the form to this slug and visit; its nonce lets it store at most one lead."""
    return form_tokens().dumps({"s": slug, "c": click_id, "n": secrets.token_urlsafe(16)})


def render_form(
    link: Link, slug: str, token: str, values: dict | None = None, errors: dict | None = None, status: int = 200
) -> Response:
    """The lead form page (also re-rendered with errors and the values kept)."""
    html = render_template(
        "lead_form.html",
        form=link.lead_form,
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
    return page(html, status)


def page(html: str, status: int) -> Response:
    """An HTML page of ours with its headers: a CSP allowing exactly its own inline style blocks (by hash; user
    text is escaped by Jinja, so it cannot add one)."""
    hashes = {base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() for block in STYLE_BLOCK.findall(html)}
    csp = CSP.format(styles=" ".join(f"'sha256-{h}'" for h in sorted(hashes)) or "'none'")
    headers = {"Content-Security-Policy": csp, **PAGE_HEADERS}
    return current_app.response_class(html, status=status, mimetype="text/html", headers=headers)


def refused(detail: str) -> Response:
    """The 403 page for a forged, expired, replayed, cross-site or bot submission."""
    return page(
        render_template("gone.html", detail=detail).replace("Link no longer available", "Submission refused"), 403
    )


def validate(form: dict, submitted: dict) -> tuple[dict, dict]:
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
                values[name] = target.normalize_phone(raw)
            except target.InvalidPhone:
                errors[name] = PHONE_ERROR  # the API's wording ("give default_region") means nothing to a visitor
        elif name == "email" and not EMAIL.match(raw):
            errors[name] = "Enter an email address like name@example.com."
    if form.get("consent") and submitted.get("consent") != "yes":
        errors["consent"] = "Please tick the box to continue."
    return values, errors


def greeting_url(link: Link, name: str | None) -> str:
    """The wa.me URL with {name} in the message replaced by the visitor's name (percent-encoded with the rest)."""
    message = link.message.replace("{name}", name or "").strip() if link.message else None
    return target.wa_me_url(link.phone, message)
