"""Helpers the tests and the benchmark share: free ports, dropping a database they created, headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager

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


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@contextmanager
def chromium(phone_width: int | None = None) -> Iterator:
    """A headless Debian Chromium driven by selenium (skips the test when it is not installed), optionally
    emulating a phone phone_width CSS pixels wide."""
    import pytest

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    if phone_width:
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": phone_width, "height": 640, "pixelRatio": 2.0}}
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()
