"""The background process gunicorn runs beside its workers: the click drainer and the outbox deliverer.

They run in a process of their own, not in the request workers, so that a batch of clicks never holds a
worker's interpreter lock while redirects wait (make bench measured the difference). gunicorn.conf.py has
SUPERVISOR run `python -m service.background --parent <master pid>` and restart it whenever it dies. One runs per
SPOOL_DIR (a lock); it touches SPOOL_DIR/background.heartbeat every second while its threads run (/health)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config
from .clicks.drainer import Drainer
from .clicks.pipeline import STAGING_DDL, Spool
from .config import Settings, load_settings
from .health import HEARTBEAT_FILE
from .platform import identity, logs
from .platform.db import Database, app_conninfo
from .platform.redis import RedisClient
from .platform.secrets import SecretBox
from .platform.supervisor import Supervisor, die_with_parent
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


# One per gunicorn master, kept in this module so that a reload (SIGHUP re-reads gunicorn.conf.py) finds the
# running one instead of forgetting it. The environment carries the services the master resolved.
SUPERVISOR = Supervisor(
    "background process (click drainer, outbox deliverer)",
    [sys.executable, "-m", "service.background"],
    environ=lambda: config.child_environ(config.current()),
)
HEARTBEAT_SECONDS = 1.0


class SignalStop:
    """Asked for by SIGTERM/SIGINT: a plain flag the handlers set, polled by whoever waits on it.

    Not a threading.Event: Event.set takes a lock, and a second signal arriving while the first handler is inside
    set() runs the handler again in the same thread, which then waits for that lock forever. Two signals at once
    is what a master's exit sends (the supervisor's SIGTERM and the parent-death SIGTERM): the process hung, an
    orphan holding its lock and its consumer."""

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self.requested = False

    def set(self, *_: object) -> None:
        """The signal handler: no lock, nothing that can block."""
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds, or until asked to stop; True when asked."""
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, self.POLL_SECONDS))
        return self.requested


def stop_on_signals() -> SignalStop:
    """A SignalStop that SIGTERM and SIGINT set."""
    stop = SignalStop()
    signal.signal(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, stop.set)
    return stop


def _take_lock(directory: Path, stop: SignalStop) -> int:
    """Hold SPOOL_DIR/background.lock (pid inside) for the life of the process: a second background process for
    the same directory (an orphan of a crashed master, a second `make run`) waits here instead of running."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "background.lock", os.O_RDWR | os.O_CREAT, 0o600)
    waiting = False
    while not stop.is_set():
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BlockingIOError:
            if not waiting:
                log.warning("another background process holds %s/background.lock; waiting", directory)
                waiting = True
            stop.wait(0.5)
    return fd


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM or SIGINT (or the parent's death), then let the current batch finish."""
    parser = argparse.ArgumentParser(prog="python -m service.background")
    parser.add_argument("--parent", type=int, help="pid of the supervising process; exit when it dies")
    args = parser.parse_args(argv)
    if args.parent:
        die_with_parent(args.parent)
    stop = stop_on_signals()
    settings = load_settings()
    logs.configure(settings.log_format, settings.log_level)
    spool_dir = Path(settings.spool_dir)
    _take_lock(spool_dir, stop)
    if stop.is_set():
        return
    work = BackgroundWork.build(settings)
    if settings.drain_clicks:
        work.drainer.start()
    if settings.deliver_events:
        work.deliverer.start()
    log.info(
        "click drainer %s, outbox deliverer %s",
        "on" if settings.drain_clicks else "off",
        "on" if settings.deliver_events else "off",
    )
    heartbeat = spool_dir / HEARTBEAT_FILE
    while not stop.is_set():
        running = (work.drainer.alive or not settings.drain_clicks) and (
            work.deliverer.alive or not settings.deliver_events
        )
        if running:
            try:
                heartbeat.touch()  # the time is the file's mtime: no disk space needed, even on a full disk
            except OSError as exc:
                log.warning("heartbeat not written: %s", exc)
        stop.wait(HEARTBEAT_SECONDS)
    work.stop()


if __name__ == "__main__":
    main()
