"""The background process gunicorn runs beside its workers: the click drainer and the outbox deliverer.

They run in a process of their own, not in the request workers, so that a batch of clicks never holds a
worker's interpreter lock while redirects wait (make bench measured the difference). Start it with
`python -m service.background`; gunicorn.conf.py does, and restarts it if it dies."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from .clicks.drainer import Drainer
from .clicks.pipeline import STAGING_DDL, Spool
from .config import Settings, load_settings
from .platform import identity, logs
from .platform.db import Database, app_conninfo
from .platform.redis import RedisClient
from .platform.secrets import SecretBox
from .webhooks.deliverer import Deliverer

log = logging.getLogger(__name__)


@dataclass
class BackgroundWork:
    """The drainer and the deliverer, sharing one small pool that opens connections only when used."""

    drainer: Drainer
    deliverer: Deliverer
    db: Database
    redis: RedisClient

    @classmethod
    def build(cls, settings: Settings) -> BackgroundWork:
        """Both workers as the settings describe them (not started)."""
        db = Database(
            app_conninfo(settings.database_url, settings.app_database_url),
            size=2,
            timeout_ms=max(settings.db_timeout_ms, 10000),
            setup_sql=STAGING_DDL,
            min_size=0,
        )
        db.open()
        redis = RedisClient.from_settings(settings, identity.namespace(settings.database_url))
        drainer = Drainer(
            redis,
            db,
            Spool(Path(settings.spool_dir)),
            batch=settings.drain_batch,
            reclaim_idle_ms=settings.reclaim_idle_ms,
            gather_ms=settings.drain_gather_ms,
        )
        deliverer = Deliverer(
            db,
            SecretBox(settings.secrets_key),
            whatsapp_base=settings.whatsapp_api_base,
            timeout=settings.webhook_timeout_seconds,
            max_attempts=settings.webhook_max_attempts,
            retry_base_seconds=settings.webhook_retry_base_seconds,
            allow_private=settings.webhook_allow_private,
            concurrency=settings.webhook_concurrency,
            per_account=settings.webhook_account_concurrency,
            breaker_failures=settings.webhook_breaker_failures,
            breaker_seconds=settings.webhook_breaker_seconds,
        )
        return cls(drainer, deliverer, db, redis)

    def stop(self) -> None:
        """Stop both threads (letting the current batch finish) and close the connections."""
        self.drainer.stop()
        self.deliverer.stop()
        self.db.close()
        self.redis.close()


def main() -> None:
    """Run until SIGTERM or SIGINT, then let the current batch finish."""
    settings = load_settings()
    logs.configure(settings.log_format, settings.log_level)
    work = BackgroundWork.build(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if settings.drain_clicks:
        work.drainer.start()
    if settings.deliver_events:
        work.deliverer.start()
    log.info(
        "click drainer %s, outbox deliverer %s",
        "on" if settings.drain_clicks else "off",
        "on" if settings.deliver_events else "off",
    )
    stop.wait()
    work.stop()


if __name__ == "__main__":
    main()
