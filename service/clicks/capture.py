"""Click capture on the hot path: a click's fields from the WSGI environ, no I/O, no raw IP kept."""

from __future__ import annotations

import re
import time
from functools import lru_cache
from urllib.parse import parse_qsl

import uuid6
from flask import current_app

from ..platform.secrets import VisitorKeys, keyed_hash
from .pipeline import UTM_FIELDS

# Crawlers, link-preview fetchers (WhatsApp, Facebook, Slack, Twitter, Telegram, …) and HTTP libraries.
BOT_PATTERN = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|facebookexternalhit|facebookcatalog|meta-externalagent|whatsapp|"
    r"slack|twitterbot|telegrambot|discordbot|linkedinbot|skypeuripreview|embedly|quora link preview|"
    r"pinterest|vkshare|redditbot|applebot|bingpreview|google-inspectiontool|googleother|yandex|baiduspider|"
    r"headlesschrome|lighthouse|curl/|wget/|python-requests|python-urllib|go-http-client|okhttp|java/|"
    r"libwww|httpclient|axios/|node-fetch|preview",
    re.IGNORECASE,
)
COUNTRY = re.compile(r"^[A-Z]{2}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@lru_cache(maxsize=4096)
def is_bot(user_agent: str) -> bool:
    """True for crawlers and link-preview fetchers: they get their 302 but are counted apart."""
    return bool(BOT_PATTERN.search(user_agent))


def clean(value: str | None, limit: int) -> str | None:
    """value without control characters, cut to limit; None when nothing is left."""
    if not value:
        return None
    return _CONTROL.sub("", value)[:limit] or None


class Geo:
    """Country of an address from the offline database shipped with geoip2fast (loaded on first use)."""

    _lookup = None

    @classmethod
    def country(cls, address: str | None) -> str | None:
        """The ISO country code of address, or None when unknown."""
        if not address:
            return None
        if cls._lookup is None:
            from geoip2fast import GeoIP2Fast

            cls._lookup = GeoIP2Fast(verbose=False)
        try:
            code = cls._lookup.lookup(address).country_code
        except Exception:  # a malformed address is an unknown country, never a failed redirect
            return None
        return code if code and COUNTRY.match(code) else None


def wsgi_text(value: str) -> str:
    """A header or query string as sent: WSGI hands the raw bytes over decoded as latin-1; browsers send UTF-8."""
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


class ClickCapture:
    """Build a click from a request's WSGI environ: everything the stats need, and no raw IP."""

    def __init__(self, visitor_keys: VisitorKeys, country_header: str, honor_dnt: bool) -> None:
        self.visitor_keys = visitor_keys
        # The CDN's country header as the WSGI environ names it (CF-IPCountry → HTTP_CF_IPCOUNTRY).
        self.country_environ_key = "HTTP_" + country_header.upper().replace("-", "_") if country_header else ""
        self.honor_dnt = honor_dnt

    def should_record(self, environ: dict) -> bool:
        """HEAD is not a click; neither is a visit that opted out when the operator honours DNT/GPC."""
        if environ["REQUEST_METHOD"] == "HEAD":
            return False
        return not (self.honor_dnt and (environ.get("HTTP_DNT") == "1" or environ.get("HTTP_SEC_GPC") == "1"))

    def capture(self, environ: dict) -> dict:
        """The click's fields (JSON-ready, short keys for the stream); link and account are added by whoever
        resolves it. It reads the WSGI environ, not a Flask request, because the fast path answers without one."""
        address = environ.get("REMOTE_ADDR") or ""
        user_agent = wsgi_text(environ.get("HTTP_USER_AGENT", ""))[:512]
        country = None
        if self.country_environ_key:
            header = environ.get(self.country_environ_key, "").upper()
            country = header if COUNTRY.match(header) and header not in {"XX", "T1"} else None
        if country is None:
            country = Geo.country(address)
        click = {
            "id": str(uuid6.uuid7()),
            "ts": time.time(),
            "ref": clean(wsgi_text(environ.get("HTTP_REFERER", "")), 1024),
            "ua": user_agent,
            "bot": is_bot(user_agent),
            "cc": country,
            "vid": keyed_hash(self.visitor_keys.today(), f"{address}|{user_agent}"),
        }
        query = environ.get("QUERY_STRING", "")
        if "utm" in query:  # utm_ or utm%5F
            for field, value in parse_qsl(wsgi_text(query)):
                value = clean(value, 200)
                if field in UTM_FIELDS and value and field not in click:
                    click[field] = value
        return click


def click_capture() -> ClickCapture:
    """The request's app's click capture."""
    return current_app.extensions["chatlink.click_capture"]
