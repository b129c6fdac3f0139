"""marshmallow schemas for the links API's input: unknown fields rejected, phone and message normalised on load."""

from __future__ import annotations

from datetime import UTC, datetime

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from ..platform.http import StrictBoolean
from . import slugs, target
from .model import LEAD_FORM_FIELDS

TAG_PATTERN = r"^[^\x00-\x1f\x7f]{1,50}\Z"


NO_CONTROLS = validate.Regexp(r"^[^\x00-\x1f\x7f]*\Z", error="Control characters are not allowed.")


class LeadForm(Schema):
    """A link's lead form: which fields it asks for, which are required, and its texts."""

    class Meta:
        unknown = RAISE

    fields_ = fields.List(
        fields.String(validate=validate.OneOf(LEAD_FORM_FIELDS)),
        data_key="fields",
        required=True,
        validate=validate.Length(min=1, max=len(LEAD_FORM_FIELDS)),
    )
    required = fields.List(fields.String(validate=validate.OneOf(LEAD_FORM_FIELDS)), load_default=list)
    heading = fields.String(load_default="Before we chat", validate=[validate.Length(min=1, max=200), NO_CONTROLS])
    button = fields.String(load_default="Continue to WhatsApp", validate=[validate.Length(min=1, max=50), NO_CONTROLS])
    consent = fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=500), NO_CONTROLS])

    @validates_schema
    def _required_are_asked(self, data: dict, **_) -> None:
        if len(set(data.get("fields_", []))) != len(data.get("fields_", [])):
            raise ValidationError("List each field once.", "fields")
        missing = set(data.get("required", [])) - set(data.get("fields_", []))
        if missing:
            raise ValidationError(f"Required fields must be in fields: {', '.join(sorted(missing))}.", "required")

    @post_load
    def _plain(self, data: dict, **_) -> dict:
        data["fields"] = data.pop("fields_")
        return data


class LinkFields(Schema):
    """Fields shared by create and edit."""

    class Meta:
        unknown = RAISE

    phone = fields.String(validate=validate.Length(max=64))
    default_region = fields.String(validate=validate.Length(equal=2))
    message = fields.String(allow_none=True)
    title = fields.String(
        allow_none=True,
        validate=[
            validate.Length(max=200),
            NO_CONTROLS,
        ],
    )
    tags = fields.List(
        fields.String(validate=validate.Regexp(TAG_PATTERN, error="Tags are 1-50 printable characters.")),
        validate=validate.Length(max=20),
    )
    expires_at = fields.AwareDateTime(allow_none=True)
    lead_form = fields.Nested(LeadForm, allow_none=True)
    max_clicks = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1, max=2**62))

    @validates("default_region")
    def _region(self, value: str, **_) -> None:
        if not target.is_region(value):
            raise ValidationError("Not an ISO 3166 alpha-2 region code, e.g. BR, US, GB.")

    @validates("message")
    def _message(self, value: str | None, **_) -> None:
        if value is not None:
            _check(target.clean_message, value)

    @validates("expires_at")
    def _future(self, value: datetime | None, **_) -> None:
        if value is None:
            return
        try:
            in_utc = value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("Must be before the year 9999.") from None
        if in_utc <= datetime.now(UTC):
            raise ValidationError("Must be in the future.")
        if in_utc.year >= 9999:
            raise ValidationError("Must be before the year 9999.")

    @validates_schema
    def _phone(self, data: dict, **_) -> None:
        if "default_region" in data and "phone" not in data:
            raise ValidationError("Give phone with default_region.", "default_region")
        if "phone" in data:
            try:
                target.normalize_phone(data["phone"], data.get("default_region"))
            except target.InvalidPhone as exc:
                raise ValidationError(str(exc), "phone") from None

    @post_load
    def _normalise(self, data: dict, **_) -> dict:
        if "phone" in data:
            data["phone"] = target.normalize_phone(data["phone"], data.pop("default_region", None))
        if data.get("message") is not None:
            data["message"] = target.clean_message(data["message"]) or None
        if "tags" in data:
            data["tags"] = sorted(set(data["tags"]))
        return data


def _check(clean, value: str) -> None:
    try:
        clean(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class LinkCreate(LinkFields):
    """POST /api/v1/links."""

    phone = fields.String(required=True, validate=validate.Length(max=64))
    slug = fields.String()

    @validates("slug")
    def _slug(self, value: str, **_) -> None:
        problem = slugs.problem_with(value)
        if problem:
            raise ValidationError(problem)

    @post_load
    def _lowercase_slug(self, data: dict, **_) -> dict:
        if "slug" in data:
            data["slug"] = slugs.normalize(data["slug"])
        return data


class LinkEdit(LinkFields):
    """PATCH /api/v1/links/<slug>: any subset of the editable fields."""

    disabled = StrictBoolean()


class LinkListQuery(Schema):
    """GET /api/v1/links query string."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None)
    tag = fields.String(load_default=None, validate=[validate.Length(max=50), NO_CONTROLS])
    q = fields.String(load_default=None, validate=[validate.Length(max=200), NO_CONTROLS])


# What PATCH may change: every field of LinkEdit but the input-only default_region.
EDITABLE = tuple(name for name in LinkEdit().fields if name != "default_region")
