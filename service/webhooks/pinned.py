"""One HTTP POST to a resolved Target: connected to exactly its checked address, TLS verified against the host
name, no proxy from the environment, no redirect followed, no second DNS look-up."""

from __future__ import annotations

import certifi
import urllib3

from .addresses import Target


class PostFailed(Exception):
    """The request did not get an answer (connection refused, timeout, TLS failure…); the message says which."""


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float, ca_certs: str | None = None) -> int:
    """POST body to target and return the status code; raises PostFailed when no answer came. ca_certs: the
    certificate authorities to trust (default: certifi's bundle)."""
    kwargs: dict[str, object] = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False}
    if target.scheme == "https":
        # The pool connects to the address; the certificate must still name the host the tenant registered.
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or certifi.where(),
            **kwargs,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, **kwargs)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
        status = response.status
        response.close()  # the body is not read: a receiver cannot keep a sender busy by streaming one
        return status
    except urllib3.exceptions.HTTPError as exc:
        raise PostFailed(type(exc).__name__) from None
    finally:
        pool.close()
