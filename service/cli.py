"""Command-line tasks: migrate, rollback, api-key, revoke-key, user, rotate-secrets, replay-dead, config (run by
the Makefile through `python -m service.cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg.rows
from redis import RedisError

from . import auth
from .accounts import passwords, store
from .accounts.routes import INVITE_LIFETIME, invite_url
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
    user = commands.add_parser(
        "user", help="add a person to an account; password from stdin, else a one-time set-password link"
    )
    user.add_argument("email")
    user.add_argument("account")
    user.add_argument("--role", choices=["owner", "member"], default="owner")
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
        elif args.command == "user":
            return add_user(url, settings, args.email, args.account, args.role)
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


def add_user(url: str, settings: Settings, email: str, account: str, role: str) -> int:
    """Create the person (and account) if new with the role; set the password piped on stdin, or print a
    one-time set-password link (valid 72 h) when stdin is a terminal or empty. Never a password in argv."""
    email = passwords.normalize_email(email)
    password = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read().removesuffix("\n")
    if password and (problems := passwords.password_problems(password)):
        print("error: password refused: " + " ".join(problems), file=sys.stderr)
        return 1
    migrations.migrate(url)
    with psycopg.connect(url) as conn:
        account_id, user_id = store.admin_user(conn, account, email, role)
        if password:
            store.admin_set_password(conn, user_id, passwords.hash_password(password))
            print(f"{email} is {role} of '{account}'; password set")
            return 0
        expires_at = datetime.now(UTC) + INVITE_LIFETIME
        token = store.admin_set_password_token(conn, account_id, email, role, expires_at)
    print(f"{email} is {role} of '{account}'. One-time link to set the password (valid 72 h):")
    print(invite_url(settings.public_base_url, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
