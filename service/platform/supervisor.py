"""Keeps one child process running beside the gunicorn master: spawned without pipes, watched, restarted, stopped.

subprocess.Popen is not used: its exec-status pipe, inherited by a worker the master forks at that moment, made
Popen wait for the worker to exit. os.posix_spawn has no such pipe, and closes the master's inheritable
descriptors (gunicorn's listening sockets) in the child. The child is watched through a pidfd, which reports its
exit even when gunicorn's SIGCHLD handler (waitpid(-1)) reaps it first. The child asks for SIGTERM when its
parent dies (PR_SET_PDEATHSIG, see `die_with_parent`), so even a SIGKILLed master leaves nothing behind."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


class Supervisor:
    """Runs `argv` until stop(): restarted within a second of every exit, however it ends."""

    POLL_SECONDS = 0.25
    CRASH_LOOP_SECONDS = 1.0  # a child that lived less than this is restarted after this pause, not at once

    def __init__(self, name: str, argv: list[str], environ: Callable[[], dict[str, str]]) -> None:
        self.name, self.argv, self.environ = name, argv, environ
        self.pid: int | None = None
        self.logger = log
        self._lock = threading.Lock()  # spawning and stopping exclude each other: no child outlives stop()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, logger: logging.Logger | None = None) -> None:
        """Start supervising (once: a reload that calls it again changes nothing)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self.logger = logger or log
            self._stopping.clear()
            self._thread = threading.Thread(target=self._supervise, name=f"supervise {self.name}", daemon=True)
            self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self.pid = self._spawn()
                except OSError as exc:  # e.g. a descriptor closed between listing and spawning: try again
                    self.logger.warning("%s could not be started (%s); retrying", self.name, exc)
                    self.pid = None
            if self.pid is not None:
                self.logger.info("%s started: pid %s", self.name, self.pid)
                status = self._wait(self.pid)
                if self._stopping.is_set():
                    return
                self.logger.warning("%s (pid %s) exited (%s); starting a new one", self.name, self.pid, status)
            if time.monotonic() - started < self.CRASH_LOOP_SECONDS:
                self._stopping.wait(self.CRASH_LOOP_SECONDS)

    def _spawn(self) -> int:
        inherited = [fd for fd in _open_descriptors() if fd > 2 and _inheritable(fd)]
        return os.posix_spawn(
            self.argv[0],
            [*self.argv, "--parent", str(os.getpid())],
            self.environ(),
            file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited],
        )

    def _wait(self, pid: int) -> str:
        """Block until pid exits (or stop() is called); its exit status when we were the one to reap it."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return "gone before it could be watched"
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([pidfd], [], [], self.POLL_SECONDS)
                if ready:
                    break
            else:
                return "stopping"
        finally:
            os.close(pidfd)
        try:
            _, status = os.waitpid(pid, os.WNOHANG)
            return f"status {os.waitstatus_to_exitcode(status)}"
        except ChildProcessError:
            return "reaped by gunicorn"

    def stop(self, timeout: float = 15) -> None:
        """Stop supervising and terminate the child (SIGTERM, then SIGKILL after timeout)."""
        with self._lock:
            self._stopping.set()
            pid, self.pid = self.pid, None
        if pid is not None:
            _terminate(pid, timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


def _open_descriptors() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # closed since it was listed (e.g. the listing's own descriptor)
        return False


def _terminate(pid: int, timeout: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not select.select([pidfd], [], [], timeout)[0]:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    with contextlib.suppress(ChildProcessError):  # gunicorn's SIGCHLD handler may have reaped it
        os.waitpid(pid, 0)


def die_with_parent(parent_pid: int) -> None:
    """In the child: get SIGTERM when the process that spawned it dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the line above: nobody would stop us
        sys.exit(f"parent {parent_pid} is gone")
