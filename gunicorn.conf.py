"""gunicorn settings from the environment, and the one-time start-up steps: find or start services, migrate."""

import dataclasses
import logging
import re
import sys

from service import background
from service import config as chatlink_config
from service.config import ConfigError, load_settings
from service.platform import localservices, migrations

try:
    settings = load_settings()
except ConfigError as exc:
    sys.exit(f"chatlink: {exc}")

bind = f"0.0.0.0:{settings.port}"
workers = settings.web_concurrency
worker_class = "gthread"
threads = settings.worker_threads
timeout = settings.gunicorn_timeout
graceful_timeout = 10
keepalive = 5
loglevel = settings.log_level
errorlog = "-"
accesslog = "-" if settings.access_log else None
# No client address (%(h)s) in the access log: raw IPs are never written anywhere.
access_log_format = '%(t)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms "%(a)s"'
control_socket_disable = True  # several instances (tests, bench) run side by side; none uses gunicornc
forwarded_allow_ips = "*" if settings.trusted_proxies else "127.0.0.1"


class HideAddresses(logging.Filter):
    """gunicorn's own messages name client addresses ("Invalid request from ip=…"): mask every address."""

    ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}\b")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.ADDRESS.sub("[address]", record.getMessage()), None
        return True


def _hide_addresses(server) -> None:
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(HideAddresses())


def post_fork(server, worker):
    """Workers log through the handlers they inherited; make sure each carries the address filter."""
    _hide_addresses(server)


def on_starting(server):
    """Before any worker forks: resolve PostgreSQL/Redis (configured, local or embedded) and migrate once. The
    resolved settings are installed in this process, so the workers it forks inherit them."""
    global settings
    _hide_addresses(server)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    database_url, redis_url = localservices.resolve_for_run(
        settings.database_url, settings.redis_url, settings.require_services
    )
    settings = dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)
    chatlink_config.install(settings)
    applied = migrations.migrate(settings.database_url)
    server.log.info("migrations applied: %s", ", ".join(applied) if applied else "none pending")


def when_ready(server):
    """Before the first worker forks: start the background process (click drainer, outbox deliverer), unless both
    of its jobs are switched off. SUPERVISOR lives in service.background, so a reload keeps the running one."""
    if settings.drain_clicks or settings.deliver_events:
        background.SUPERVISOR.start(server.log)


def on_exit(server):
    """Stop the background process with gunicorn (TERM, INT, QUIT; a SIGKILLed master's child gets SIGTERM)."""
    background.SUPERVISOR.stop()
