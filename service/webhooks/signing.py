"""The X-Chatlink-Signature a webhook request carries: HMAC-SHA256 over "<unix time>.<raw body>"."""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Chatlink-Signature value: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
