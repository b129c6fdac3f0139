"""A circuit breaker that tolerates one slow reply: opens on consecutive failures or a failure ratio, then lets one
probe through after a short delay that doubles while the dependency stays down."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Breaker:
    """Closed → open (after `failures` consecutive failures, or `ratio` of at least `min_calls` calls failed within
    `window` seconds) → half-open after the delay (one probe; the others still skip) → closed on its success, open
    again with twice the delay (at most `max_delay`) on its failure.

    One failed round trip shared by several callers (a ScriptBatcher batch) is one failure, not one per caller:
    pass the same exception object and it is counted once."""

    PROBE_GRACE_SECONDS = 30.0  # a probe that never reported success or failure frees the slot after this

    def __init__(
        self,
        name: str,
        *,
        failures: int = 3,
        ratio: float = 0.5,
        min_calls: int = 20,
        window: float = 10.0,
        first_delay: float = 0.2,
        max_delay: float = 5.0,
    ) -> None:
        self.name = name
        self.failures, self.ratio, self.min_calls, self.window = failures, ratio, min_calls, window
        self.first_delay, self.max_delay = first_delay, max(first_delay, max_delay)
        self._lock = threading.Lock()
        self._consecutive = 0
        self._window_start = time.monotonic()
        self._calls = self._failed = 0
        self._last_error: BaseException | None = None
        self._open = False
        self._delay = first_delay
        self._probe_at = 0.0  # while open: when the next probe may go
        self._probing = False  # half-open: one caller is probing now

    @property
    def available(self) -> bool:
        """False while the breaker is open and no probe is due."""
        return not self._open or time.monotonic() >= self._probe_at

    @property
    def is_open(self) -> bool:
        """True from the moment it opens until a probe succeeds."""
        return self._open

    @property
    def delay(self) -> float:
        """The wait before the next probe (grows while probes fail)."""
        return self._delay

    def allow(self) -> bool:
        """Whether this call may go to the dependency: always while closed; while open, one probe once it is due."""
        if not self._open:
            return True
        with self._lock:
            now = time.monotonic()
            if self._open and now < self._probe_at:
                return False
            if self._open:
                # One probe at a time; should it never report back (interrupted), another may go after the grace.
                self._probing, self._probe_at = True, now + self.PROBE_GRACE_SECONDS
            return True

    def success(self) -> None:
        """Record a call that succeeded; a successful probe closes the breaker."""
        self._consecutive = 0
        self._calls += 1  # approximate under threads (no lock on the hot path); it only feeds the ratio
        if self._open:
            with self._lock:
                if self._open:
                    log.warning("%s answers again; breaker closed", self.name)
                self._open = self._probing = False
                self._delay = self.first_delay
                self._last_error = None

    def failure(self, error: BaseException | None = None) -> None:
        """Record a failed call; open (or, after a failed probe, reopen with a longer delay) when the rule says so."""
        with self._lock:
            if error is not None and error is self._last_error:
                return  # the same failed round trip, reported by another of its callers
            self._last_error = error
            now = time.monotonic()
            if now - self._window_start > self.window:
                self._window_start, self._calls, self._failed = now, 0, 0
            self._consecutive += 1
            self._calls += 1
            self._failed += 1
            if self._open:
                if self._probing:  # the probe failed: wait longer before the next one
                    self._probing = False
                    self._delay = min(self._delay * 2, self.max_delay)
                    self._probe_at = now + self._delay
                return
            ratio_reached = self._calls >= self.min_calls and self._failed >= self.ratio * self._calls
            if self._consecutive >= self.failures or ratio_reached:
                self._open, self._probing = True, False
                self._delay = self.first_delay
                self._probe_at = now + self._delay
                log.warning(
                    "%s failed (%s); breaker open, next probe in %.2fs",
                    self.name,
                    type(error).__name__ if error else "error",
                    self._delay,
                )
