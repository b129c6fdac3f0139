"""A link's target: phone normalisation (libphonenumber rules), message checks and the wa.me URL; no I/O."""

from __future__ import annotations

import functools
import unicodedata
from urllib.parse import quote

import phonenumbers

MAX_MESSAGE_LENGTH = 2000
_ALLOWED_CONTROLS = {"\n", "\t"}


class InvalidPhone(ValueError):
    """The text is not a phone number WhatsApp could reach."""


@functools.lru_cache(maxsize=4096)
def normalize_phone(text: str, default_region: str | None = None) -> str:
    """The E.164 form (+<digits>) of a number written in any human format; raise InvalidPhone otherwise.

    Cached (a pure function): a body's phone is checked when validated and normalised again on load, and an
    integration creating links in bulk often sends the same few numbers."""
    text = text.strip()
    if not text or len(text) > 64:
        raise InvalidPhone("Enter a phone number with its country code, e.g. +55 11 98765-4321.")
    region = default_region.upper() if default_region else None
    if region is None and text.startswith("00"):
        text = "+" + text[2:]  # the international call prefix most of the world dials
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        if region is None and not text.startswith("+"):
            raise InvalidPhone("Add the country code (+44 …) or give default_region for a national number.") from None
        raise InvalidPhone("Not a phone number.") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("Not a valid phone number for its country.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def is_region(code: str) -> bool:
    """True for an ISO 3166 alpha-2 region libphonenumber knows."""
    return code.upper() in phonenumbers.SUPPORTED_REGIONS


def clean_message(text: str) -> str:
    """The message in NFC; raise ValueError for NUL, lone surrogates, other controls or excess length."""
    for char in text:
        if "\ud800" <= char <= "\udfff":
            raise ValueError("Contains an unpaired surrogate; send valid UTF-8 text.")
        if unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROLS:
            raise ValueError(f"Contains the control character U+{ord(char):04X}; only newline and tab are allowed.")
    text = unicodedata.normalize("NFC", text)
    if len(text) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"Longer than {MAX_MESSAGE_LENGTH} characters.")
    return text


def wa_me_url(phone: str, message: str | None) -> str:
    """The click-to-chat URL for an E.164 phone and an optional prefilled message."""
    url = "https://wa.me/" + phone.lstrip("+")
    if message:
        url += "?text=" + quote(message, safe="")
    return url
