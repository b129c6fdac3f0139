"""Which addresses a webhook may reach: resolved once, every address checked (embedded IPv4 unwrapped), and the
connection pinned to the checked address so a second DNS answer (rebinding) can never be used."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT, RFC 2765


class RefusedAddress(Exception):
    """The URL must not be called: its host does not resolve, or resolves to an address inside the network."""


@dataclass(frozen=True)
class Target:
    """A webhook URL resolved once: its parts and the one checked address the connection must use."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        """The Host header: the name as the URL gave it, with the port when it is not the scheme's default."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == (443 if self.scheme == "https" else 80) else f"{name}:{self.port}"


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo): each is where a
    packet may really go, so each must pass the check too."""
    if address.version == 4:
        return []
    found = []
    if address.ipv4_mapped:
        found.append(address.ipv4_mapped)
    if address in IPV4_COMPATIBLE and int(address) > 1:  # ::a.b.c.d (:: and ::1 are refused on their own)
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in NAT64 or address in NAT64_LOCAL or address in IPV4_TRANSLATED:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour:
        found.append(address.sixtofour)
    if address.teredo:
        found.extend(address.teredo)
    return found


def is_public(address: IPAddress) -> bool:
    """True only for globally routable unicast: no private, loopback, link-local, shared (CGNAT), documentation,
    multicast, reserved or unspecified address, nor one that embeds such an IPv4 address."""
    for candidate in (address, *embedded_ipv4(address)):
        if (
            not candidate.is_global
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_private
        ):
            return False
    return True


def resolve(url: str, allow_private: bool = False) -> Target:
    """Resolve url's host once and check every address it has; the first one is the one to connect to.
    Raises RefusedAddress (with the reason) when any address is not public, unless allow_private."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError, OSError):
        raise RefusedAddress("The host name does not resolve.") from None
    addresses = [info[4][0].split("%")[0] for info in infos]
    if not addresses:
        raise RefusedAddress("The host name does not resolve.")
    if not allow_private and not all(is_public(ipaddress.ip_address(a)) for a in addresses):
        raise RefusedAddress("The URL points to a private, loopback, link-local or otherwise internal address.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, addresses[0])


def address_problem(url: str) -> str | None:
    """Why url must not be called (it resolves to an internal address, or not at all), or None.

    Tenants choose webhook URLs; without this check they could make the service probe the internal network."""
    try:
        resolve(url)
    except RefusedAddress as exc:
        return str(exc)
    return None
