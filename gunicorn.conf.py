"""gunicorn settings from the environment, and the one-time start-up steps: find or start services, migrate."""

import logging
import os
import sys
from pathlib import Path

from service import localservices, migrations
from service.config import ConfigError, load_settings

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


def on_starting(server):
    """Before any worker forks: resolve PostgreSQL/Redis (configured, local or embedded) and migrate once."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.update(localservices.resolve_for_run(Path(__file__).resolve().parent / ".data"))
    applied = migrations.migrate(os.environ["DATABASE_URL"])
    server.log.info("migrations applied: %s", ", ".join(applied) if applied else "none pending")
