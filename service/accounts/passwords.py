"""Passwords: the OWASP ASVS 5.0 §6 rules, argon2id hashing (argon2-cffi's recommended profile), emails."""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 128  # ASVS asks for at least 64; argon2 takes any length, the cap only bounds the work
COMMON_PASSWORDS = Path(__file__).with_name("common_passwords.txt")

# argon2-cffi's default parameters are its current recommendation (RFC 9106's low-memory profile, argon2id);
# a hash made with older ones is re-made at the next successful login.
_hasher = PasswordHasher()
# Verified when the email is unknown, so that answer costs what a wrong password costs.
_DUMMY_HASH = _hasher.hash("not a password anyone has: the email was unknown")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords (lowercase), read once from the shipped data file."""
    return frozenset(line for line in COMMON_PASSWORDS.read_text().splitlines() if line)


def password_problems(password: object) -> list[str]:
    """Why password is refused (empty when it is acceptable): length and the common list, nothing else."""
    if not isinstance(password, str):
        return ["Send the password as a string."]
    length = len(unicodedata.normalize("NFC", password))
    if length < MIN_LENGTH:
        return [f"Use at least {MIN_LENGTH} characters."]
    if length > MAX_LENGTH:
        return [f"Use at most {MAX_LENGTH} characters."]
    if password.casefold() in common_passwords():
        return ["This password is one of the most common ones; choose another."]
    return []


def hash_password(password: str) -> str:
    """The argon2id hash to store (NFC first, so the same text typed on two keyboards matches)."""
    return _hasher.hash(unicodedata.normalize("NFC", password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when password matches; with no stored hash, a dummy verification of the same cost, then False."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, unicodedata.normalize("NFC", password)) and bool(stored_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with other parameters than today's profile."""
    return _hasher.check_needs_rehash(stored_hash)


def normalize_email(email: str) -> str:
    """The one spelling of an email address: NFKC, trimmed, case-folded (unique and compared in this form)."""
    return unicodedata.normalize("NFKC", email).strip().casefold()
