"""Which webhook URLs may be called: none that resolves to a private, loopback or link-local address."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def address_problem(url: str) -> str | None:
    """Why url must not be called (it resolves to a private, loopback or link-local address), or None.

    Tenants choose webhook URLs; without this check they could make the service probe the internal network."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return "The host name does not resolve."
    if any(not ipaddress.ip_address(address.split("%")[0]).is_global for address in addresses):
        return "The URL points to a private, loopback or link-local address."
    return None
