"""The test helpers themselves: free_port."""

from __future__ import annotations

import os
import socket

from tests.support import free_port


def test_free_port_wraps_around_its_range_past_a_taken_port(monkeypatch):
    # It starts at an offset from the process id; from the last port of the range it must go on at the first, not
    # give up (CI once failed a test with "no free port" when one port was left to try).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        start = taken - 1
        monkeypatch.setattr(os, "getpid", lambda: 1)  # offset 1 of a span of 2: the taken port comes first
        assert free_port(start, taken + 1) == start
