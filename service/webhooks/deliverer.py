"""The outbox deliverer: posts due events (webhooks signed, WhatsApp through the Cloud API), retried with back-off."""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import UTC, datetime, timedelta

import psycopg
import requests

from ..platform.db import UNAVAILABLE_ERRORS, Database, is_row_error, query
from ..platform.loop import Loop
from .addresses import address_problem
from .signing import sign

log = logging.getLogger(__name__)
# Cloud API error codes worth retrying: throttling and temporary failures. Anything else (bad token 190,
# unknown template 132001, invalid parameter 100, …) will not fix itself and fails at once.
WHATSAPP_RETRYABLE = {1, 2, 4, 17, 80007, 130429, 131000, 131016, 131056, 133004}


class Deliverer(Loop):
    """Posts due outbox rows: webhooks signed, WhatsApp through the Cloud API; retries with exponential back-off."""

    thread_name = "outbox-deliverer"

    def __init__(
        self,
        db: Database,
        *,
        whatsapp_base: str,
        timeout: float,
        max_attempts: int,
        retry_base_seconds: float,
        allow_private: bool = False,
        batch: int = 20,
    ) -> None:
        self.db = db
        self.allow_private = allow_private
        self.whatsapp_base = whatsapp_base.rstrip("/")
        self.timeout, self.max_attempts, self.retry_base = timeout, max_attempts, retry_base_seconds
        super().__init__(join_seconds=timeout + 2)
        self.batch = batch
        self.http = requests.Session()

    def deliver_once(self) -> int:
        """Lease and attempt every due delivery (up to a batch); return how many were attempted."""
        with self.db.connection() as conn:
            due = query(conn, "claim_deliveries", {"limit": self.batch, "lease": int(self.timeout * 3 + 30)}).fetchall()
        for row in due:
            self._attempt(row)
        return len(due)

    def _attempt(self, row: dict) -> None:
        started = time.monotonic()
        try:
            if row["url"]:
                delivered, status, error, retryable = self._post_webhook(row)
            elif row["phone_number_id"]:
                delivered, status, error, retryable = self._post_whatsapp(row)
            else:  # the WhatsApp settings were removed after the event was queued
                delivered, status, error, retryable = False, None, "WhatsApp Business is no longer configured", False
        except requests.RequestException as exc:
            delivered, status, error, retryable = False, None, type(exc).__name__, True
        attempts = row["attempts"] + 1
        retry_at = None
        if not delivered and retryable and attempts < self.max_attempts:
            delay = min(self.retry_base * 2 ** (attempts - 1), 3600) * random.uniform(0.8, 1.2)  # noqa: S311
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        with self.db.connection() as conn:
            query(
                conn,
                "finish_delivery",
                {
                    "id": row["id"],
                    "delivered": delivered,
                    "status": status,
                    "error": (error or "")[:500] or None,
                    "retry_at": retry_at,
                    "duration_ms": int((time.monotonic() - started) * 1000),
                },
            )

    def _post_webhook(self, row: dict) -> tuple[bool, int | None, str | None, bool]:
        problem = None if self.allow_private else address_problem(row["url"])
        if problem:  # checked again at each call: DNS may have changed since registration
            return False, None, problem, False
        body = json.dumps(row["payload"], separators=(",", ":"), default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Chatlink-Webhooks/1",
            "X-Chatlink-Event-Id": str(row["event_id"]),
            "X-Chatlink-Event-Type": row["event_type"],
            "X-Chatlink-Signature": sign(row["secret"], int(time.time()), body),
        }
        response = self.http.post(row["url"], data=body, headers=headers, timeout=self.timeout, allow_redirects=False)
        ok = 200 <= response.status_code < 300
        # 4xx other than timeouts/throttling mean the receiver refuses this event; keep trying anyway (it may be
        # deploying), up to the attempt limit — a receiver that is down must still get every event.
        return ok, response.status_code, None if ok else f"HTTP {response.status_code}", True

    def _post_whatsapp(self, row: dict) -> tuple[bool, int, str | None, bool]:
        lead = row["payload"]["data"]
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": row["notify_number"].lstrip("+"),
            "type": "template",
            "template": {
                "name": row["template"],
                "language": {"code": row["language"]},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": lead.get("name") or "-"},
                            {"type": "text", "text": lead.get("phone") or lead.get("email") or "-"},
                            {"type": "text", "text": lead.get("link") or "-"},
                        ],
                    }
                ],
            },
        }
        response = self.http.post(
            f"{self.whatsapp_base}/{row['phone_number_id']}/messages",
            json=body,
            timeout=self.timeout,
            headers={"Authorization": f"Bearer {row['access_token']}"},
            allow_redirects=False,
        )
        if response.status_code == 200:
            return True, 200, None, False
        try:
            error = response.json()["error"]
            code, message = int(error.get("code", 0)), str(error.get("message", ""))[:200]
        except (ValueError, KeyError, TypeError):
            code, message = 0, "unreadable error body"
        retryable = response.status_code >= 500 or response.status_code == 429 or code in WHATSAPP_RETRYABLE
        return False, response.status_code, f"code {code}: {message}", retryable

    def run(self) -> None:
        """Until stopped: one step after another, waiting when there is nothing to do, backing off while
        PostgreSQL is unavailable, read-only or misconfigured (a lease it cannot write is simply retried)."""
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.deliver_once() == 0:
                    self.stopping.wait(1)
                failures = 0
            except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:
                failures += 1
                if is_row_error(exc):  # one outbox row PostgreSQL refuses: a bug to see, not a pause
                    log.exception("outbox deliverer: a row was refused; retrying")
                else:
                    log.warning("outbox deliverer waiting for PostgreSQL: %s", type(exc).__name__)
                self.backoff(failures)
            except Exception:
                failures += 1
                log.exception("outbox deliverer failed; retrying")
                self.backoff(failures)
