"""gunicorn settings from the environment, and the one-time start-up steps: find or start services, migrate."""

import atexit
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psycopg
import redis


# --- metrics (issue 13): first, because importing `service` imports prometheus-client, which chooses at import
# time between in-memory values and PROMETHEUS_MULTIPROC_DIR's files shared by every worker and the background process.
# (The one read of os.environ outside config.py: it must happen before config.py can be imported.)
def _metrics_dir() -> None:
    """The configured folder, made if missing; else a new temporary one, removed when this process exits."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        return
    created = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chatlink-metrics-")
    creator = os.getpid()  # forked workers inherit atexit handlers: only this process removes the folder
    atexit.register(lambda: os.getpid() == creator and shutil.rmtree(created, ignore_errors=True))


_metrics_dir()

from service import background  # noqa: E402 (after the metrics folder, see above)
from service import config as chatlink_config  # noqa: E402
from service.config import ConfigError, load_settings  # noqa: E402
from service.platform import identity, localservices, logs, migrations  # noqa: E402


def _refuse(problem: object) -> None:
    """A setting the service cannot start with: one line naming it on stderr, exit status 2, no traceback."""
    print(f"chatlink: {problem}", file=sys.stderr, flush=True)
    sys.exit(2)


try:
    settings = load_settings()
except ConfigError as exc:
    _refuse(exc)

# Loopback unless BIND says otherwise: the service belongs behind a reverse proxy (deploy/nginx), which guards it
# from slow clients; gunicorn's gthread workers read request headers with no timeout of their own.
bind = f"[{settings.bind}]:{settings.port}" if ":" in settings.bind else f"{settings.bind}:{settings.port}"
workers = settings.web_concurrency
worker_class = "gthread"
threads = settings.worker_threads
timeout = settings.gunicorn_timeout
graceful_timeout = 10
keepalive = 5
loglevel = settings.log_level
errorlog = "-"
# JSON (or text) lines for gunicorn and the app alike; the access log is the app's own (platform/observe.py), with
# route, status, duration and request id, never the client address. Every message has its addresses masked.
logconfig_dict = logs.dict_config(settings.log_format, settings.log_level)
accesslog = None
logger_class = "service.platform.logs.GunicornLogger"  # a name, not the class: the benchmark's baseline copies it
control_socket_disable = True  # several instances (tests, bench) run side by side; none uses gunicornc
forwarded_allow_ips = "*" if settings.trusted_proxies else "127.0.0.1"


def _start_up_problem(exc: Exception) -> str:
    """One line naming the setting behind a failure to reach or prepare a service."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, redis.RedisError):
        return f"REDIS_URL: Redis cannot be used ({first_line})"
    if isinstance(exc, psycopg.Error | migrations.MigrationError):
        return f"DATABASE_URL: cannot prepare the database ({first_line})"
    return first_line  # ServiceUnavailable names what is missing itself


def on_starting(server):
    """Before any worker forks: resolve PostgreSQL/Redis (configured, local or embedded) and migrate once. The
    resolved settings are installed in this process, so the workers it forks inherit them."""
    global settings
    _prepare_metrics_dir()
    try:
        database_url, redis_url = localservices.resolve_for_run(
            settings.database_url, settings.redis_url, settings.require_services
        )
        settings = dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)
        chatlink_config.install(settings)
        applied = migrations.migrate(settings.database_url)
    except (localservices.ServiceUnavailable, migrations.MigrationError, psycopg.Error, redis.RedisError) as exc:
        _refuse(_start_up_problem(exc))
    server.log.info("migrations applied: %s", ", ".join(applied) if applied else "none pending")
    # Read once here, so that every worker inherits it and can start (and serve from Redis) with PostgreSQL down.
    server.log.info("redis keys under %s%s:", settings.key_prefix, identity.namespace(settings.database_url))


# --- metrics (issue 13) --------------------------------------------------------------------------------------------
def _prepare_metrics_dir() -> None:
    """Forget the files of an earlier run in a configured PROMETHEUS_MULTIPROC_DIR (counters would add up)."""
    for stale in Path(settings.prometheus_multiproc_dir).glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server, worker):
    """A worker is gone: drop its live gauges (pool, breaker) from the sums; its counters stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    """Before the first worker forks: start the background process (click drainer, outbox deliverer), unless both
    of its jobs are switched off. SUPERVISOR lives in service.background, so a reload keeps the running one."""
    if settings.drain_clicks or settings.deliver_events:
        background.SUPERVISOR.start(server.log)


def post_worker_init(worker):
    """The worker has loaded the app: everything it built so far (modules, phonenumbers' metadata, the user-agent
    rules, the app) lives as long as the worker, so it goes out of the garbage collector's reach. A full collection
    walked all of it, 25-100 ms in the middle of a request (the p99 of make bench-analytics), and now looks only at
    what requests made."""
    gc.freeze()


def on_exit(server):
    """Stop the background process with gunicorn (TERM, INT, QUIT; a SIGKILLed master's child gets SIGTERM)."""
    background.SUPERVISOR.stop()
