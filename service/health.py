"""Liveness (/livez, no dependency touched) and readiness (/health, application/health+json per dependency)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import psycopg
from flask import Blueprint, Response

from .clicks.pipeline import click_sink
from .platform.db import database
from .platform.redis import redis_client

bp = Blueprint("health", __name__)
CHECK_TIMEOUT_SECONDS = 0.5
# Checks run on their own threads so that a hung dependency cannot hold the answer past the bound.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")


@bp.get("/livez")
def livez() -> Response:
    """200 whenever the process serves."""
    return Response('{"status":"pass"}', mimetype="application/health+json")


def _postgres_check(conninfo: str) -> Callable[[], None]:
    def check() -> None:
        # A fresh connection, not the pool: the pool would wait its own timeout for a free connection.
        with psycopg.connect(conninfo, connect_timeout=1, autocommit=True) as conn:
            conn.execute("select 1")

    return check


def _timed(check: Callable[[], None]) -> tuple[bool, float, str | None]:
    started = time.perf_counter()
    future = _checks.submit(check)
    try:
        future.result(timeout=CHECK_TIMEOUT_SECONDS)
        ok, error = True, None
    except FutureTimeout:
        ok, error = False, f"no answer within {int(CHECK_TIMEOUT_SECONDS * 1000)} ms"
    except Exception as exc:  # any failure of the dependency is a failed check, never a failed response
        ok, error = False, type(exc).__name__
    return ok, round((time.perf_counter() - started) * 1000, 2), error


@bp.get("/health")
def health() -> Response:
    """pass (200), warn with Redis down (200), fail with PostgreSQL down (503); one check per dependency."""
    postgres = _timed(_postgres_check(database().conninfo))
    redis_ok = _timed(redis_client().ping)
    checks = {}
    for name, (ok, latency, error) in (("postgresql:connection", postgres), ("redis:connection", redis_ok)):
        entry = {
            "componentType": "datastore",
            "observedValue": latency,
            "observedUnit": "ms",
            "status": "pass" if ok else ("fail" if name.startswith("postgresql") else "warn"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if error:
            entry["output"] = error
        checks[name] = [entry]
    # This process's count of clicks no store could take (Redis, PostgreSQL and the spool all failed).
    dropped = click_sink().dropped.value()
    checks["clicks:dropped"] = [
        {"componentType": "component", "observedValue": dropped, "status": "pass" if dropped == 0 else "warn"}
    ]
    status = "fail" if not postgres[0] else ("warn" if not redis_ok[0] or dropped else "pass")
    body = {"status": status, "checks": checks}
    return Response(
        json.dumps(body),
        status=503 if status == "fail" else 200,
        mimetype="application/health+json",
        headers={"Cache-Control": "no-store"},
    )
