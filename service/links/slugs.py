"""Slug generation and validation: pure functions, no I/O."""

from __future__ import annotations

import re
import secrets

from werkzeug.routing import BaseConverter

# Lowercase letters and digits without the look-alikes 0/o and 1/l/i: 31 symbols, 8 of them ≈ 39.6 bits.
ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
GENERATED_LENGTH = 8
SLUG_PATTERN = re.compile(r"[a-z0-9_-]{3,64}\Z")
# Checked before lower-casing: str.lower() folds some non-ASCII letters into ASCII ones (the Kelvin sign into k).
CUSTOM_PATTERN = re.compile(r"[A-Za-z0-9_-]{3,64}\Z")
RESERVED = frozenset(
    {
        "api",
        "health",
        "livez",
        "readyz",
        "healthz",
        "metrics",
        "static",
        "openapi.json",
        "docs",
        "admin",
        "login",
        "logout",
        "invite",
        "favicon.ico",
        "robots.txt",
        "sitemap.xml",
        ".well-known",
        "assets",
        "www",
        "app",
    }
)


class SlugConverter(BaseConverter):
    """URL segments that could be a slug in any case; anything else (NUL, dots, 200 characters) is a plain 404."""

    regex = r"[A-Za-z0-9_-]{1,64}"


def generate() -> str:
    """A new random slug from the unambiguous alphabet."""
    return "".join(secrets.choice(ALPHABET) for _ in range(GENERATED_LENGTH))


def normalize(slug: str) -> str:
    """Slugs are case-insensitive: stored and matched lowercase."""
    return slug.lower()


def problem_with(slug: str) -> str | None:
    """Why slug cannot be a custom slug, or None when it can."""
    if not CUSTOM_PATTERN.match(slug):
        return "Use 3 to 64 characters from a-z, 0-9, '-' and '_'."
    slug = normalize(slug)
    if slug in RESERVED:
        return f"'{slug}' is reserved."
    return None


def could_exist(slug: str) -> bool:
    """True when slug (already lowercased) could name a link; lets the redirect refuse junk without I/O."""
    return bool(SLUG_PATTERN.match(slug)) and slug not in RESERVED
