"""Local HTTP peers for the tests: a webhook receiver that can be down (and checks signatures as a receiver
would), and a WhatsApp Cloud API stand-in."""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.webhooks.signing import sign
from tests.support import free_port


def verify(secret: str, header: str, body: bytes, tolerance: int = 300, now: float | None = None) -> bool:
    """What a receiver does with X-Chatlink-Signature: recompute it and refuse stale timestamps (replays)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class _Server:
    """A threaded HTTP server on a fixed port that can be stopped and started again on the same port."""

    def __init__(self, port_range: tuple[int, int]) -> None:
        self.port = free_port(*port_range)
        self.received: list[dict] = []
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = server.answer(self.path, dict(self.headers), body)
                server.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "status": status}
                )
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def answer(self, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        raise NotImplementedError


class WebhookReceiver(_Server):
    """Answers 200 (or the statuses queued in `replies`) and keeps every request."""

    def __init__(self) -> None:
        super().__init__((28000, 29000))
        self.replies: list[int] = []

    def answer(self, path, headers, body):
        return (self.replies.pop(0) if self.replies else 200), {"ok": True}


class FakeCloudApi(_Server):
    """Speaks the WhatsApp Cloud API `POST /{version}/{phone-number-id}/messages` as documented by Meta:
    200 with contacts/messages ids, or an `{"error": {message, type, code, error_subcode, fbtrace_id}}` body."""

    TOKEN = "EAAG-test-token-123456"

    def __init__(self) -> None:
        super().__init__((29000, 30000))
        self.errors: list[tuple[int, int, str]] = []  # queued (http status, error code, message)
        self.raw: list[tuple[int, object]] = []  # queued (http status, body) answered as is, whatever was asked

    def answer(self, path, headers, body):
        if self.raw:
            return self.raw.pop(0)

        def error(status, code, message, kind="OAuthException"):
            return status, {
                "error": {"message": message, "type": kind, "code": code, "error_subcode": 0, "fbtrace_id": "AbCdEf123"}
            }

        if headers.get("Authorization") != f"Bearer {self.TOKEN}":
            return error(401, 190, "Error validating access token: Session has expired")
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[2] != "messages" or not parts[1].isdigit():
            return error(400, 100, "Unsupported post request.", "GraphMethodException")
        message = json.loads(body)
        if message.get("messaging_product") != "whatsapp" or message.get("type") != "template":
            return error(400, 100, "(#100) Invalid parameter")
        if not message.get("template", {}).get("name"):
            return error(400, 100, "(#100) Param template['name'] is required")
        if self.errors:
            return error(*self.errors.pop(0))
        return 200, {
            "messaging_product": "whatsapp",
            "contacts": [{"input": message["to"], "wa_id": message["to"]}],
            "messages": [{"id": f"wamid.HBgL{len(self.received)}"}],
        }
