"""Helpers the tests and the benchmark share: free ports, and dropping a database they created."""

from __future__ import annotations

import os
import socket

import psycopg
from psycopg import sql


def free_port(start: int = 20000, end: int = 32000) -> int:
    """A TCP port below the ephemeral range that nothing listens on now."""
    for port in range(start + os.getpid() % 1000, end):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port")


def drop_database(server: str, dbname: str) -> None:
    """Drop database dbname, closing the sessions still connected to it."""
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
