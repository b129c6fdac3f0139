"""Command-line tasks: migrate, rollback, api-key, revoke-key, rotate-secrets, replay-dead, config (run by the
Makefile through `python -m service.cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import psycopg
import psycopg.rows
from redis import RedisError

from . import auth
from .clicks.drainer import Drainer
from .clicks.pipeline import Spool
from .config import ConfigError, Settings, describe, load_settings
from .platform import identity, localservices, migrations
from .platform.db import Database, query
from .platform.redis import RedisClient
from .platform.secrets import SecretBox, SecretsKeyMissing


def owner_url(settings: Settings) -> str:
    """DATABASE_URL, or the local/embedded database `make run` uses."""
    if settings.database_url:
        return settings.database_url
    server, _ = localservices.server_url(localservices.DATA_DIR, settings.require_services)
    localservices.create_database(server, "chatlink")
    return localservices.with_database(server, "chatlink")


def rotate_secrets(url: str, box: SecretBox) -> int:
    """Re-encrypt every stored webhook secret and WhatsApp token with the first key of SECRETS_KEY (rows still in
    plain text are encrypted); one transaction, so a failure leaves every row as it was. Returns the row count."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.row_factory = psycopg.rows.dict_row
        webhooks = query(conn, "stored_webhook_secrets").fetchall()
        for row in webhooks:
            query(conn, "reseal_webhook_secret", {"id": row["id"], "secret": box.reseal(row["secret"])})
        tokens = query(conn, "stored_whatsapp_tokens").fetchall()
        for row in tokens:
            sealed = box.reseal(row["access_token"])
            query(conn, "reseal_whatsapp_token", {"account_id": row["account_id"], "access_token": sealed})
    return len(webhooks) + len(tokens)


def replay_dead(settings: Settings) -> int:
    """Move the dead letters of this database's Redis namespace and SPOOL_DIR back onto the click stream; return
    how many."""
    redis_url = settings.redis_url or localservices.redis_url(localservices.DATA_DIR, settings.require_services)[0]
    namespace = identity.namespace(owner_url(settings))  # the keys belong to the database (see platform/identity)
    redis = RedisClient.from_settings(dataclasses.replace(settings, redis_url=redis_url), namespace)
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
    commands.add_parser("rotate-secrets", help="re-encrypt stored secrets with the first key of SECRETS_KEY")
    commands.add_parser("config", help="print the effective settings (secrets masked) and where each came from")
    commands.add_parser("replay-dead", help="move dead-lettered clicks back onto the click stream (after a fix)")
    args = parser.parse_args(argv)
    if args.command == "config":
        return print_config()
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
        elif args.command == "rotate-secrets":
            count = rotate_secrets(url, SecretBox(settings.secrets_key))
            print(f"re-encrypted {count} stored secrets with the first key of SECRETS_KEY")
    except (
        ConfigError,
        migrations.MigrationError,
        localservices.ServiceUnavailable,
        psycopg.Error,
        RedisError,
        SecretsKeyMissing,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def print_config() -> int:
    """Every setting's effective value, secrets masked, and its source (default, profile, environment)."""
    try:
        rows = describe()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value or '(empty)'}  [{source}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
