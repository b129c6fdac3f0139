"""Liveness (/livez, no dependency touched) and readiness (/health): what this node can do, check by check."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import psycopg
import redis
from flask import Blueprint, Response

from .clicks.pipeline import ClickSink, click_sink, stream_key
from .config import settings
from .platform.db import database
from .platform.redis import redis_client

bp = Blueprint("health", __name__)
CHECK_TIMEOUT_SECONDS = 0.5
HEARTBEAT_FILE = "background.heartbeat"  # in SPOOL_DIR: touched every second by the background process
# Probes run on their own threads so that a hung dependency cannot hold the answer past the bound.
_probes = ThreadPoolExecutor(max_workers=6, thread_name_prefix="health")


@bp.get("/livez")
def livez() -> Response:
    """200 whenever the process serves."""
    return Response('{"status":"pass"}', mimetype="application/health+json")


def _postgres_probe(conninfo: str) -> Callable[[], dict]:
    def probe() -> dict:
        started = time.perf_counter()
        # A fresh connection, not the pool: the pool would wait its own timeout for a free connection.
        with psycopg.connect(conninfo, connect_timeout=1, autocommit=True) as conn:
            read_only, standby = conn.execute(
                "select current_setting('transaction_read_only') = 'on', pg_is_in_recovery()"
            ).fetchone()
        return {"latency": _ms(started), "read_only": read_only, "standby": standby}

    return probe


def _redis_probe(client: redis.Redis, prefix: str, stream: str) -> Callable[[], dict]:
    def probe() -> dict:
        started = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            pipe.ping()
            # A write to a key of ours: a Redis at maxmemory (noeviction) or refusing writes (MISCONF) fails it.
            pipe.set(f"{prefix}health:probe", "1", px=60000)
            pipe.xrange(stream, count=1)
            pipe.xlen(f"{stream}:dead")
            _, written, oldest, dead = pipe.execute(raise_on_error=False)
        if isinstance(_, Exception):
            raise _
        lag = 0.0
        if isinstance(oldest, list) and oldest:  # ids start with the entry's time in ms
            lag = max(0.0, round(time.time() - int(oldest[0][0].split("-")[0]) / 1000, 1))
        return {
            "latency": _ms(started),
            "write_error": str(written) if isinstance(written, Exception) else None,
            "lag": None if isinstance(oldest, Exception) else lag,
            "dead": None if isinstance(dead, Exception) else int(dead),
        }

    return probe


def _local_probe(sink: ClickSink, spool_dir: Path) -> Callable[[], dict]:
    def probe() -> dict:
        try:
            heartbeat_age = round(time.time() - (spool_dir / HEARTBEAT_FILE).stat().st_mtime, 1)
        except FileNotFoundError:
            heartbeat_age = None
        return {
            "heartbeat_age": heartbeat_age,
            "spool_bytes": sink.spool.pending_bytes(),
            "spool_dead": sink.spool.dead_records(),
            "dropped": sink.dropped.value(),
        }

    return probe


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _run_probes(probes: dict[str, Callable[[], dict]]) -> dict[str, dict | str]:
    """Each probe's result, or the reason it has none (its error, or no answer within the bound)."""
    futures = {name: _probes.submit(probe) for name, probe in probes.items()}
    wait(futures.values(), timeout=CHECK_TIMEOUT_SECONDS)
    results: dict[str, dict | str] = {}
    for name, future in futures.items():
        if not future.done():
            results[name] = f"no answer within {int(CHECK_TIMEOUT_SECONDS * 1000)} ms"
        elif future.exception() is not None:  # any failure of the dependency is a failed check, never a 500
            results[name] = type(future.exception()).__name__
        else:
            results[name] = future.result()
    return results


def _check(kind: str, value, unit: str | None, ok: bool, output: str | None = None, status_if_bad="warn") -> list:
    entry = {"componentType": kind, "observedValue": value, "status": "pass" if ok else status_if_bad}
    if unit:
        entry["observedUnit"] = unit
    entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if output:
        entry["output"] = output
    return [entry]


@bp.get("/health")
def health() -> Response:
    """fail (503) only when this node cannot serve redirects (neither PostgreSQL nor a writable Redis answers);
    warn (200) for every degraded state; pass otherwise. Every check is named, with what it observed."""
    config, redis_ = settings(), redis_client()
    results = _run_probes(
        {
            "postgresql": _postgres_probe(database().conninfo),
            "redis": _redis_probe(redis_.client, redis_.prefix, stream_key(redis_)),
            "local": _local_probe(click_sink(), Path(config.spool_dir)),
        }
    )
    pg, rd, local = results["postgresql"], results["redis"], results["local"]
    pg_up, redis_up = isinstance(pg, dict), isinstance(rd, dict)
    redis_writable = redis_up and rd["write_error"] is None
    # Cached redirects need Redis to take the click (the script queues it); others need PostgreSQL.
    serves = pg_up or redis_writable
    down = "warn" if serves else "fail"
    checks = {
        "postgresql:connection": _check(
            "datastore", pg["latency"] if pg_up else None, "ms", pg_up, None if pg_up else pg, down
        ),
        "postgresql:writable": _check(
            "datastore",
            pg_up and not pg["read_only"],
            None,
            pg_up and not pg["read_only"],
            None
            if not pg_up
            else ("standby (in recovery)" if pg["standby"] else "read-only" if pg["read_only"] else None),
        ),
        "redis:connection": _check(
            "datastore", rd["latency"] if redis_up else None, "ms", redis_up, None if redis_up else rd, down
        ),
        "redis:writable": _check(
            "datastore", redis_writable, None, redis_writable, rd["write_error"] if redis_up else None
        ),
    }
    checks.update(_click_checks(config, rd if redis_up else None, local))
    statuses = {entry[0]["status"] for entry in checks.values()}
    status = "fail" if not serves else ("warn" if "warn" in statuses or "fail" in statuses else "pass")
    return Response(
        json.dumps({"status": status, "checks": checks}),
        status=503 if status == "fail" else 200,
        mimetype="application/health+json",
        headers={"Cache-Control": "no-store"},
    )


def _click_checks(config, rd: dict | None, local: dict | str) -> dict[str, list]:
    """The background process's heartbeat and the state of the click pipeline on this node."""
    checks: dict[str, list] = {}
    unknown = "unknown: " + (local if isinstance(local, str) else "Redis does not answer")
    if not (config.drain_clicks or config.deliver_events):
        checks["background:heartbeat"] = _check("component", None, "s", True, "DRAIN_CLICKS and DELIVER_EVENTS off")
    elif isinstance(local, dict):
        age = local["heartbeat_age"]
        alive = age is not None and age <= config.health_heartbeat_seconds
        checks["background:heartbeat"] = _check(
            "component", age, "s", alive, None if alive else "the background process is not running"
        )
    else:
        checks["background:heartbeat"] = _check("component", None, "s", False, unknown)
    lag = rd["lag"] if rd else None
    checks["clicks:drain-lag"] = _check(
        "component", lag, "s", lag is not None and lag <= config.health_drain_lag_seconds, None if rd else unknown
    )
    if isinstance(local, dict):
        checks["clicks:spool"] = _check("component", local["spool_bytes"], "bytes", local["spool_bytes"] == 0)
        dead = local["spool_dead"] + ((rd["dead"] or 0) if rd else 0)
        checks["clicks:dead-letters"] = _check("component", dead, None, dead == 0, None if rd else unknown)
        checks["clicks:dropped"] = _check("component", local["dropped"], None, local["dropped"] == 0)
    else:
        for name in ("clicks:spool", "clicks:dead-letters", "clicks:dropped"):
            checks[name] = _check("component", None, None, False, unknown)
    return checks
