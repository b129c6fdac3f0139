"""Logging: one JSON object per line (or readable text), the request id on every line, no forged lines, no addresses."""

from __future__ import annotations

import ipaddress
import logging
import logging.config
import re
import time
from contextvars import ContextVar

from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

# The id of the request the current thread serves, set by the outermost WSGI layer (platform/observe.py).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# C0 and C1 control characters and DEL: a CR/LF would start a forged log line, an ESC would drive the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Candidates only: ipaddress decides, so that a time such as 2026:04:03:39 is not taken for an IPv6 address.
_ADDRESS = re.compile(r"(?<![\w.:])[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*(?![\w.:])|\b\d{1,3}(?:\.\d{1,3}){3}\b")


def escape(text: str) -> str:
    """text with every control character written as \\xNN: one log line stays one line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def hide_addresses(text: str) -> str:
    """text with every IPv4/IPv6 address replaced by [address] (gunicorn names clients in its own messages)."""

    def mask(match: re.Match) -> str:
        core = match[0].rstrip(":.")  # "ip=127.0.0.1: Invalid request" ends the address with a colon
        # The address itself, or an IPv4 address with its port ("Listening at: http://127.0.0.1:8000").
        for candidate in (core, core.rpartition(":")[0]):
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            return "[address]" + match[0][len(candidate) :]
        return match[0]

    return _ADDRESS.sub(mask, text)


class Context(logging.Filter):
    """Adds the request id; masks addresses and escapes control characters in the message, whoever wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        record.msg, record.args = escape(hide_addresses(record.getMessage())), None
        return True


class Json(JsonFormatter):
    """time (ISO 8601, UTC, milliseconds), level, logger, message, and whatever the call passed as extra."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger", "asctime": "time"})
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", *args, **kwargs)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def process_log_record(self, log_record: dict) -> dict:
        if log_record.get("request_id") is None:
            log_record.pop("request_id", None)
        return log_record


class Text(logging.Formatter):
    """For a terminal: time, level, logger, request id, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = getattr(record, "request_id", None) or "-"
        return super().format(record)


class GunicornLogger(glogging.Logger):
    """gunicorn's logger without gunicorn's access log. platform/observe.py writes the access line itself (route,
    request id, account); but with logconfig_dict set, gunicorn would still build its access-log atoms for every
    request (a dict of some 20 formatted fields, about a fifth of a cached redirect's instructions) only for the
    gunicorn.access logger to drop the line."""

    def access(self, resp, req, environ, request_time) -> None:
        return None


def dict_config(log_format: str, level: str) -> dict:
    """The logging configuration (logging.config.dictConfig, gunicorn's logconfig_dict) for every process."""
    handler = {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # Dotted names, not the classes: the benchmark copies this dict into a config file of its own with repr().
        "filters": {"context": {"()": f"{__name__}.Context"}},
        "formatters": {"json": {"()": f"{__name__}.Json"}, "text": {"()": f"{__name__}.Text"}},
        "handlers": {
            "stdout": {**handler, "stream": "ext://sys.stdout"},
            "stderr": {**handler, "stream": "ext://sys.stderr"},
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            # The access log is written by platform/observe.py, which knows the route, request id and account.
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def configure(log_format: str, level: str) -> None:
    """Configure this process's logging (the background process; gunicorn takes dict_config itself)."""
    logging.config.dictConfig(dict_config(log_format, level))
