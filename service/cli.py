"""Command-line tasks: migrate, rollback, api-key, revoke-key, replay-dead (run by the Makefile through
`python -m service.cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import psycopg
from redis import RedisError

from . import auth
from .clicks.drainer import Drainer
from .clicks.pipeline import Spool
from .config import ConfigError, Settings, load_settings
from .platform import localservices, migrations
from .platform.db import Database
from .platform.redis import RedisClient


def owner_url(settings: Settings) -> str:
    """DATABASE_URL, or the local/embedded database `make run` uses."""
    if settings.database_url:
        return settings.database_url
    server, _ = localservices.server_url(localservices.DATA_DIR, settings.require_services)
    localservices.create_database(server, "chatlink")
    return localservices.with_database(server, "chatlink")


def replay_dead(settings: Settings) -> int:
    """Move the dead letters of REDIS_URL/KEY_PREFIX and SPOOL_DIR back onto the click stream; return how many."""
    redis_url = settings.redis_url or localservices.redis_url(localservices.DATA_DIR, settings.require_services)[0]
    redis = RedisClient.from_settings(dataclasses.replace(settings, redis_url=redis_url))
    db = Database("", size=1, timeout_ms=settings.db_timeout_ms)  # never opened: replaying needs no PostgreSQL
    drainer = Drainer(redis, db, Spool(Path(settings.spool_dir)), batch=settings.drain_batch, reclaim_idle_ms=1000)
    try:
        return drainer.replay_dead()
    finally:
        drainer.redis.close()
        redis.close()


def main(argv: list[str] | None = None) -> int:
    """Run one task; exit status 0 on success, 1 with a message on stderr otherwise."""
    parser = argparse.ArgumentParser(prog="python -m service.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("rollback", help="revert the latest migration")
    key = commands.add_parser("api-key", help="create an API key (and the account if new)")
    key.add_argument("account")
    revoke = commands.add_parser("revoke-key", help="revoke an API key by its public id or full key")
    revoke.add_argument("key_prefix")
    commands.add_parser("replay-dead", help="move dead-lettered clicks back onto the click stream (after a fix)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "replay-dead":
            print(f"replayed: {replay_dead(settings)} dead letters onto the click stream")
            return 0
        url = owner_url(settings)
        if args.command == "migrate":
            applied = migrations.migrate(url)
            print("applied: " + ", ".join(applied) if applied else "nothing to apply")
        elif args.command == "rollback":
            reverted = migrations.rollback(url)
            print(f"reverted: {reverted}" if reverted else "nothing to revert")
        elif args.command == "api-key":
            migrations.migrate(url)
            with psycopg.connect(url) as conn:
                key_text = auth.issue_key(conn, args.account)
            print(f"API key for account '{args.account}' (shown once; store it now):")
            print(key_text)
        elif args.command == "revoke-key":
            public_id = args.key_prefix.removeprefix("clk_").split("_")[0]
            with psycopg.connect(url) as conn:
                if not auth.revoke_key(conn, public_id):
                    print(f"no live key with public id '{public_id}'", file=sys.stderr)
                    return 1
            print(f"revoked key {public_id}")
    except (ConfigError, migrations.MigrationError, localservices.ServiceUnavailable, psycopg.Error, RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
