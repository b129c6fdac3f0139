"""The analytics API's query strings: a time range in any IANA zone (from/to/tz), and each endpoint's options."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

MAX_DAYS = {"day": 731, "hour": 31}


class RangeQuery(Schema):
    """from/to as ISO dates (midnight in tz) or datetimes; tz an IANA zone."""

    class Meta:
        unknown = RAISE

    start = fields.String(data_key="from", load_default=None)
    end = fields.String(data_key="to", load_default=None)
    tz = fields.String(load_default="UTC")
    default_days = 30
    # Roll-ups are per UTC hour: ranges read from them are widened to whole hours, and the answer says so.
    whole_hours = False

    @validates_schema
    def _parse_range(self, data: dict, **_) -> None:
        try:
            zone = ZoneInfo(data["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError("Not an IANA time zone such as America/Sao_Paulo.", "tz") from None
        end = _instant(data["end"], zone, "to") if data["end"] else datetime.now(UTC)
        start = _instant(data["start"], zone, "from") if data["start"] else end - timedelta(days=self.default_days)
        if self.whole_hours:
            start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            end_floor = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            end = end_floor if end_floor == end else end_floor + timedelta(hours=1)
        if start >= end:
            raise ValidationError("Must be before 'to'.", "from")
        data.update(zone=zone, start_at=start.astimezone(zone), end_at=end.astimezone(zone))
        self.check_span(data)

    def check_span(self, data: dict) -> None:
        """Subclasses bound the range."""


def _instant(text: str, zone: ZoneInfo, field: str) -> datetime:
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), zone)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("Use an ISO 8601 date (2026-11-01) or date-time.", field) from None
    if not 1970 <= moment.year <= 9000:
        raise ValidationError("Use a year between 1970 and 9000.", field)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


class LinkStatsQuery(RangeQuery):
    """GET /links/<slug>/stats."""

    whole_hours = True
    interval = fields.String(load_default="day", validate=validate.OneOf(["day", "hour"]))
    include_bots = fields.Boolean(load_default=False)
    top = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))

    def check_span(self, data: dict) -> None:
        if data["end_at"] - data["start_at"] > timedelta(days=MAX_DAYS[data["interval"]]):
            raise ValidationError(f"At most {MAX_DAYS[data['interval']]} days per {data['interval']} series.", "from")


class AccountStatsQuery(RangeQuery):
    """GET /stats."""

    whole_hours = True
    top = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class ClicksQuery(RangeQuery):
    """GET /links/<slug>/clicks (and the leads list): a range and a page."""

    cursor = fields.String(load_default=None)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
