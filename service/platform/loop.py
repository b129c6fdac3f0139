"""A daemon thread that runs a worker's loop until it is stopped (the drainer's, the deliverer's)."""

from __future__ import annotations

import threading


class Loop:
    """Subclasses implement run(), which returns once self.stopping is set, and may wait on it to sleep."""

    thread_name = "loop"
    MAX_BACKOFF_SECONDS = 8.0

    def __init__(self, join_seconds: float) -> None:
        self.stopping = threading.Event()
        self.join_seconds = join_seconds  # how long stop() waits for the step in progress
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """The loop itself."""
        raise NotImplementedError

    def start(self) -> None:
        """Run the loop on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    def backoff(self, failures: int) -> None:
        """Wait after the failures-th failed step in a row: 1 s, 2 s, 4 s, then MAX_BACKOFF_SECONDS (or stop)."""
        self.stopping.wait(min(self.MAX_BACKOFF_SECONDS, 0.5 * 2**failures))

    @property
    def alive(self) -> bool:
        """True while the loop's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask the loop to end and wait (bounded) for the step in progress to finish."""
        self.stopping.set()
        if self._thread:
            self._thread.join(timeout=self.join_seconds)
