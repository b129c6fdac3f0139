"""Command-line tasks: migrate, rollback, api-key, revoke-key, config (run by the Makefile: `python -m service.cli`)."""

from __future__ import annotations

import argparse
import sys

import psycopg

from . import auth
from .config import ConfigError, Settings, describe, load_settings
from .platform import localservices, migrations


def owner_url(settings: Settings) -> str:
    """DATABASE_URL, or the local/embedded database `make run` uses."""
    if settings.database_url:
        return settings.database_url
    server, _ = localservices.server_url(localservices.DATA_DIR, settings.require_services)
    localservices.create_database(server, "chatlink")
    return localservices.with_database(server, "chatlink")


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
    commands.add_parser("config", help="print the effective settings (secrets masked) and where each came from")
    args = parser.parse_args(argv)
    if args.command == "config":
        return print_config()
    try:
        url = owner_url(load_settings())
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
    except (ConfigError, migrations.MigrationError, localservices.ServiceUnavailable, psycopg.Error) as exc:
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
