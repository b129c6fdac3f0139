"""Embedded services for `make run`: an orphan of a crashed starter is found, reused and stopped by the next
owner; a stale pidfile is harmless; a data directory in use is never deleted. Uses servers of its own (own ports,
own directories), never the machine's shared PostgreSQL or Redis."""

import os
import signal
import subprocess
import sys
import time

import pytest

from service.platform import localservices
from tests.conftest import ROOT
from tests.support import free_port

STARTER = """
import os, signal, sys
from pathlib import Path
from service.platform import localservices
url, how = localservices.embedded_redis(Path(sys.argv[1]), int(sys.argv[2]), stop_at_exit=True)
print(url, flush=True)
if sys.argv[3] == "crash":
    os.kill(os.getpid(), signal.SIGKILL)  # make run's master killed: no atexit, no clean-up
"""


def _start_redis_in_a_process(directory, port, how):
    return subprocess.run(
        [sys.executable, "-c", STARTER, str(directory), str(port), how], cwd=ROOT, capture_output=True, timeout=60
    )


def _redis_pid(directory) -> int:
    return int((directory / "redis.pid").read_text())


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while localservices._alive(pid, "redis-server"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_embedded_redis_left_by_a_crashed_starter_is_reused_and_stopped_by_the_next(tmp_path):
    directory, port = tmp_path / "redis", free_port(28000, 29000)
    crashed = _start_redis_in_a_process(directory, port, "crash")
    assert crashed.returncode == -signal.SIGKILL
    orphan = _redis_pid(directory)
    try:
        assert localservices._alive(orphan, "redis-server")  # still running: nobody stopped it
        clean = _start_redis_in_a_process(directory, port, "exit")  # the next start, which ends cleanly
        assert clean.returncode == 0, clean.stderr
        assert clean.stdout.decode().strip() == f"redis://127.0.0.1:{port}/0"
        assert _gone(orphan)  # it reused the orphan and stopped it on its way out
        assert not localservices.redis_answers(f"redis://127.0.0.1:{port}/0")
    finally:
        if localservices._alive(orphan, "redis-server"):
            os.kill(orphan, signal.SIGKILL)


def test_a_stale_redis_pidfile_does_not_stop_a_new_start(tmp_path):
    directory, port = tmp_path / "redis", free_port(28000, 29000)
    directory.mkdir()
    (directory / "redis.pid").write_text(f"{os.getpid()}\n")  # a pid that is alive but not a redis-server
    url, _ = localservices.embedded_redis(directory, port, stop_at_exit=False)
    pid = _redis_pid(directory)
    try:
        assert pid != os.getpid() and localservices._alive(pid, "redis-server")
    finally:
        localservices.stop_redis(url)
    assert _gone(pid)


def test_a_process_that_does_not_own_the_embedded_server_does_not_stop_it(tmp_path):
    lock = tmp_path / "redis.owner"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; f=open(sys.argv[1],'w'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('locked', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert localservices._own(lock) is False  # `make run` owns it: `make migrate` must not stop it
    finally:
        holder.kill()
        holder.wait()
    assert localservices._own(lock) is True  # the owner died (even by SIGKILL): the next one owns it


@pytest.mark.live
def test_a_data_directory_is_never_deleted_while_its_server_runs_even_after_a_restart(tmp_path):
    from pgserver import pg_ctl

    pgdata = tmp_path / "pg"
    url, _ = localservices.embedded_postgres(pgdata, stop_at_exit=False)
    try:
        user = "pgserver" if os.geteuid() == 0 else None
        # A restart gives the server a new pid; pgserver's clean-up remembered the old one.
        pg_ctl(["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"], pgdata=pgdata, user=user, timeout=60)
        assert localservices.postgres_answers(url)
        with pytest.raises(RuntimeError, match="still runs"):
            localservices.remove_data_directory(pgdata)
        assert (pgdata / "PG_VERSION").exists()
    finally:
        localservices.stop_postgres(pgdata)
    assert not localservices.postgres_running(pgdata)
    localservices.remove_data_directory(pgdata)
    assert not pgdata.exists()
