"""Slow clients: gunicorn binds loopback by default, and the shipped nginx configuration (deploy/nginx) in front of a
real gunicorn keeps normal redirects answering through 200 slowloris connections and slow bodies."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx" / "chatlink.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


@pytest.mark.parametrize(
    ("environ", "bind"),
    [({}, "127.0.0.1:8000"), ({"BIND": "::1", "PORT": "8080"}, "[::1]:8080"), ({"BIND": "0.0.0.0"}, "0.0.0.0:8000")],
)
def test_gunicorn_binds_loopback_unless_bind_says_otherwise(monkeypatch, environ, bind):
    for name in ("BIND", "PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == bind


def _site_config(listen_port: int, upstream_port: int, logs: Path) -> str:
    """deploy/nginx/chatlink.conf as shipped, with only its ports and log paths changed for this test."""
    text = SITE.read_text()
    replacements = [
        (r"listen 80;", f"listen 127.0.0.1:{listen_port};"),
        (r"\n\s*listen \[::\]:80;", ""),
        (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        (r"/var/log/nginx/", f"{logs}/"),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        assert count, f"deploy/nginx/chatlink.conf no longer has {pattern!r}: update this test with it"
    return text


class Nginx:
    """Debian's nginx with the shipped site configuration, on a loopback port of its own."""

    def __init__(self, upstream_port: int, directory: Path) -> None:
        self.port = free_port(29000, 30000)
        self.url = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "chatlink.conf").write_text(_site_config(self.port, upstream_port, directory))
        temp = "".join(f"{kind}_temp_path {directory}/{kind};\n" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
        (directory / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/main-error.log;\n"
            + "events { worker_connections 2048; }\n"
            + f"http {{\naccess_log off;\nclient_body_temp_path {directory}/body;\n{temp}"
            + f"include {directory}/chatlink.conf;\n}}\n"
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "stderr.log").open("wb"),
        )
        wait_until_serving(self.url, self.process, 20, directory / "stderr.log", "nginx")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class SlowClients:
    """Connections that send their request a byte a second: headers that never end, or a body that never ends."""

    def __init__(self, port: int, headers: int, bodies: int) -> None:
        self.port = port
        self.closed_by_server = {"headers": 0, "body": 0}
        self.pending: dict[socket.socket, bytes] = {}
        self.kind: dict[socket.socket, str] = {}
        for i in range(headers + bodies):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setblocking(False)
            if i < headers:
                request = b"GET /slowloris HTTP/1.1\r\nHost: chat.example\r\nUser-Agent: " + b"x" * 600 + b"\r\n\r\n"
            else:
                sock.sendall(b"POST /api/v1/links HTTP/1.1\r\nHost: chat.example\r\nContent-Type: application/json\r\n")
                sock.sendall(b"Content-Length: 2000\r\n\r\n")
                request = b"{" + b" " * 1999
            self.pending[sock] = request
            self.kind[sock] = "headers" if i < headers else "body"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stopping.wait(1):
            for sock, rest in list(self.pending.items()):
                try:
                    if sock.recv(4096) == b"":  # the server gave up on us (an answer, or a close)
                        raise ConnectionResetError
                except BlockingIOError:
                    pass
                except OSError:
                    self._closed(sock)
                    continue
                try:
                    sock.send(rest[:1])
                    self.pending[sock] = rest[1:]
                except OSError:
                    self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        self.closed_by_server[self.kind[sock]] += 1
        del self.pending[sock]
        sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for sock in self.pending:
            sock.close()


def _redirect_latencies(url: str, seconds: float, threads: int = 4) -> tuple[list[float], dict[str, int]]:
    """Normal visitors for seconds: each request's latency (302s only) and the count of every other result."""
    latencies: list[float] = []
    others: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    def visitor() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = session.get(url, allow_redirects=False, timeout=30)
                    outcome = str(response.status_code)
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                if outcome == "302":
                    latencies.append(time.perf_counter() - started)
                else:
                    others[outcome] = others.get(outcome, 0) + 1
                time.sleep(0.02)

    workers = [threading.Thread(target=visitor) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, others


def _figures(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{len(ms)} redirects, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms"


@pytest.mark.live
def test_behind_nginx_slowloris_and_slow_bodies_do_not_hold_up_normal_redirects(live_server, new_api_key, tmp_path):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); .ci/run installs it")
    server = live_server(RATE_LIMITS_ENABLED="0", TRUSTED_PROXIES="1", ACCESS_LOG="0")
    proxy = Nginx(server.port, tmp_path / "nginx")
    try:
        key = new_api_key()
        slug = requests.post(
            f"{proxy.url}/api/v1/links",
            headers={"Authorization": f"Bearer {key}"},
            json={"phone": "+14155552671"},
            timeout=10,
        ).json()["slug"]
        url = f"{proxy.url}/{slug}"
        quiet, quiet_failures = _redirect_latencies(url, 10)
        attack = SlowClients(proxy.port, headers=200, bodies=20)
        try:
            loud, loud_failures = _redirect_latencies(url, 10)
            time.sleep(3)  # past client_header_timeout / client_body_timeout (5 s) since the attack began
        finally:
            attack.stop()
        print(
            f"\nslow clients behind nginx: without the attack {_figures(quiet)}; with 200 slowloris connections"
            f" and 20 slow bodies {_figures(loud)}; slow connections closed by nginx: {attack.closed_by_server}"
        )
        assert quiet and loud
        assert quiet_failures == {} and loud_failures == {}  # every normal redirect answered 302, none failed
        # nginx cut every request whose headers did not arrive within client_header_timeout; the slow bodies (a byte
        # a second never trips client_body_timeout) sat in nginx's buffer, never in one of gunicorn's 4 threads.
        assert attack.closed_by_server["headers"] == 200
    finally:
        proxy.stop()
