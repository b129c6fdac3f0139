"""The database's id (service_identity, made by migration 0006): the namespace of every Redis key the service writes,
so that Redis state belongs to one database and a recreated one never reads the old keys."""

from __future__ import annotations

import threading

import psycopg

from .db import QUERIES

_known: dict[str, str] = {}
_lock = threading.Lock()


def namespace(owner_url: str) -> str:
    """The id of the database at owner_url, read once per process (the gunicorn master reads it after migrating, so
    its workers inherit it and start even while PostgreSQL is down)."""
    with _lock:
        if owner_url not in _known:
            with psycopg.connect(owner_url, connect_timeout=5, autocommit=True) as conn:
                row = conn.execute(QUERIES["service_identity"]).fetchone()
            if row is None:
                raise RuntimeError("service_identity is empty: run the migrations (make migrate)")
            _known[owner_url] = row[0]
        return _known[owner_url]
