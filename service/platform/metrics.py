"""Prometheus metrics: the platform's own (HTTP, Redis, PostgreSQL, pool), process gauges sampled each second, and
the exposition of every process's metrics at once (prometheus-client's multiprocess mode under gunicorn).

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module: prometheus-client decides at
import time whether values live in memory or in that folder's files, which /metrics then adds up."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-exported for the view)
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "chatlink_http_requests_total", "HTTP requests answered, by route group and status.", ["group", "status"]
)
HTTP_DURATION = Histogram(
    "chatlink_http_request_duration_seconds",
    "Time from the request reaching the app to its response starting, by route group.",
    ["group"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REDIS_ERRORS = Counter("chatlink_redis_errors_total", "Redis calls that failed, by component.", ["component"])
POSTGRES_ERRORS = Counter(
    "chatlink_postgres_errors_total", "PostgreSQL operations that failed (down, refusing), by component.", ["component"]
)


def gauge(name: str, doc: str, across_processes: str = "mostrecent") -> Gauge:
    """A gauge; across_processes says how the processes' values combine (mostrecent, livesum, livemax…)."""
    return Gauge(name, doc, multiprocess_mode=across_processes)


REDIS_BREAKER_OPEN = gauge("chatlink_redis_breaker_open", "1 while a process skips Redis after a failure.", "livemax")
POOL_IN_USE = gauge("chatlink_db_pool_connections_in_use", "PostgreSQL connections lent out, all workers.", "livesum")
POOL_SIZE = gauge("chatlink_db_pool_connections", "PostgreSQL connections open, all workers.", "livesum")
POOL_WAITING = gauge("chatlink_db_pool_requests_waiting", "Requests waiting for a pooled connection.", "livesum")


def render(multiproc_dir: str) -> bytes:
    """Every metric in the Prometheus text format: all processes' files in multiprocess mode, else this process's."""
    if not multiproc_dir:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    return generate_latest(registry)


def allowed(remote_addr: str | None, authorization: str | None, networks: tuple, token: str) -> bool:
    """May this client read /metrics: its address is in METRICS_ALLOW, or it sent METRICS_TOKEN as a Bearer token."""
    presented = authorization[7:].strip() if authorization and authorization.startswith("Bearer ") else ""
    if token and presented and hmac.compare_digest(presented.encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class Sampler:
    """Gauges a process reads from its own state (pool, breaker): refreshed every second by a daemon thread under
    gunicorn, and before each scrape in the process that answers it."""

    def __init__(self) -> None:
        self._probes: dict[str, Callable[[], None]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, name: str, probe: Callable[[], None]) -> None:
        """Run probe at each sample (the process's latest app replaces an earlier one's probe of the same name)."""
        self._probes[name] = probe

    def sample(self) -> None:
        """Run every probe once; a failing probe is logged, never raised."""
        for probe in list(self._probes.values()):
            try:
                probe()
            except Exception:
                log.exception("metrics probe failed")

    def start(self, interval: float = 1.0) -> None:
        """Sample every interval seconds in a daemon thread (once per process)."""
        with self._lock:
            if self._thread is not None:
                return
            stop = threading.Event()

            def loop() -> None:
                while not stop.wait(interval):
                    self.sample()

            self._thread = threading.Thread(target=loop, name="metrics-sampler", daemon=True)
            self._thread.start()


sampler = Sampler()


def pool_probe(pool) -> Callable[[], None]:
    """Probe: a psycopg pool's connections in use, open, and requests waiting."""

    def probe() -> None:
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        POOL_SIZE.set(size)
        POOL_IN_USE.set(size - stats.get("pool_available", 0))
        POOL_WAITING.set(stats.get("requests_waiting", 0))

    return probe
