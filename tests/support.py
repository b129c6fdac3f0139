"""Helpers the tests and the benchmark share: free ports, dropping a database they created, a TCP proxy that can
slow down or stop a real server, headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import requests
from psycopg import sql


def free_port(start: int = 20000, end: int = 32000) -> int:
    """A TCP port in [start, end), below the ephemeral range, that nothing listens on now. The search starts at an
    offset from the process id (parallel runs pick different ports) and wraps around: it once started at start +
    pid % 1000 and stopped at end, which for a span of 1000 could leave a single port to try."""
    span = end - start
    offset = os.getpid() % span
    for step in range(span):
        port = start + (offset + step) % span
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {start}-{end - 1}")


def drop_database(server: str, dbname: str) -> None:
    """Drop database dbname, closing the sessions still connected to it."""
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


class TcpProxy:
    """A TCP proxy on loopback in front of a real server (Redis, PostgreSQL) that a test can slow down or stop:
    delay_replies(n, seconds) holds the next n replies, stop() refuses connections and cuts the open ones, start()
    listens again on the same port."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port(28000, 29000)
        self._lock = threading.Lock()
        self._delays: list[float] = []  # one entry per reply still to hold back
        self._slow_all = 0.0
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def url(self, scheme: str, path: str = "") -> str:
        """scheme://127.0.0.1:port/path, e.g. url("redis", "/0")."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def delay_replies(self, count: int, seconds: float) -> None:
        """Hold each of the next count replies (chunks from the server) for seconds before passing it on."""
        with self._lock:
            self._delays.extend([seconds] * count)

    def slow_all(self, seconds: float) -> None:
        """Hold every reply for seconds (0: stop holding)."""
        self._slow_all = seconds

    def start(self) -> None:
        """Listen (again) on the proxy's port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one: the server looks dead."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept(); close() alone would not
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies:
                    with self._lock:
                        hold = self._delays.pop(0) if self._delays else self._slow_all
                    if hold:
                        time.sleep(hold)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def wait_until_serving(url: str, process, seconds: float, log: Path, what: str) -> None:
    """Wait until GET url/livez answers 200; raise with log's text if process exits or seconds pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/livez", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # no worker has booted yet
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text()}")
        time.sleep(0.1)


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
