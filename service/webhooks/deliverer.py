"""The outbox deliverer: posts due events (webhooks signed, WhatsApp through the Cloud API), retried with back-off,
concurrently and fairly: a share of the senders per account, round-robin across accounts, a breaker per endpoint."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import requests

from ..platform import logs
from ..platform.db import UNAVAILABLE_ERRORS, Database, is_row_error, query
from ..platform.loop import Loop
from ..platform.metrics import POSTGRES_ERRORS, gauge
from ..platform.metrics import Counter as MetricCounter
from ..platform.secrets import SecretBox, SecretsKeyMissing
from . import pinned
from .addresses import RefusedAddress, resolve
from .signing import sign

log = logging.getLogger(__name__)
# Cloud API error codes worth retrying: throttling and temporary failures. Anything else (bad token 190,
# unknown template 132001, invalid parameter 100, …) will not fix itself and fails at once.
WHATSAPP_RETRYABLE = {1, 2, 4, 17, 80007, 130429, 131000, 131016, 131056, 133004}

DELIVERIES = MetricCounter(
    "chatlink_deliveries_total", "Delivery attempts by result: delivered, retry, failed.", ["result"]
)
OUTBOX_BACKLOG = gauge("chatlink_outbox_backlog", "Pending deliveries, all accounts.")
OUTBOX_OLDEST_DUE = gauge("chatlink_outbox_oldest_due_seconds", "How long the oldest due delivery has waited.")


class Breakers:
    """A circuit breaker per endpoint: after `failures` attempts in a row without an answer (or with a 5xx), the
    endpoint is skipped for `seconds`, so that a dead or hanging receiver stops taking senders from the others."""

    def __init__(self, failures: int, seconds: float) -> None:
        self.failures, self.seconds = failures, seconds
        self._lock = threading.Lock()
        self._failed: Counter[str] = Counter()
        self._open_until: dict[str, float] = {}

    def allows(self, endpoint: str) -> bool:
        """False while the endpoint's breaker is open."""
        with self._lock:
            return self._open_until.get(endpoint, 0.0) <= time.monotonic()

    def record(self, endpoint: str, answered: bool) -> None:
        """Count an attempt's outcome; open the breaker after too many failures in a row."""
        with self._lock:
            if answered:
                self._failed.pop(endpoint, None)
                self._open_until.pop(endpoint, None)
                return
            self._failed[endpoint] += 1
            if self._failed[endpoint] >= self.failures:
                self._open_until[endpoint] = time.monotonic() + self.seconds
                self._failed[endpoint] = 0


class Deliverer(Loop):
    """Posts due outbox rows on a small thread pool: at most `per_account` in flight per account, leased
    round-robin across accounts, so one tenant's slow endpoints cannot hold up another tenant's events."""

    thread_name = "outbox-deliverer"

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        whatsapp_base: str,
        timeout: float,
        max_attempts: int,
        retry_base_seconds: float,
        allow_private: bool = False,
        concurrency: int = 8,
        per_account: int = 2,
        breaker_failures: int = 3,
        breaker_seconds: float = 60,
    ) -> None:
        self.db, self.box = db, box
        self.allow_private = allow_private
        self.whatsapp_base = whatsapp_base.rstrip("/")
        self.timeout, self.max_attempts, self.retry_base = timeout, max_attempts, retry_base_seconds
        # A connect and a read, each bounded by the timeout, plus recording the result.
        super().__init__(join_seconds=2 * timeout + 2)
        self.concurrency, self.per_account = concurrency, per_account
        # A leased row is not leased again before this: longer than a whole attempt (connect + read + record).
        self.lease_seconds = int(self.timeout * 3 + 30)
        self.breakers = Breakers(breaker_failures, breaker_seconds)
        self.senders = ThreadPoolExecutor(concurrency, thread_name_prefix="outbox-sender")
        self._lock = threading.Lock()
        self._in_flight: Counter[int] = Counter()
        self._slot_freed = threading.Event()
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy or .netrc from the environment

    def dispatch(self) -> list[Future]:
        """Lease due rows for the free senders (one per account, round-robin, none for accounts already using
        their whole share) and start attempting them; return their futures."""
        with self._lock:
            free = self.concurrency - sum(self._in_flight.values())
            busy = [account for account, n in self._in_flight.items() if n >= self.per_account]
        if free <= 0:
            return []
        with self.db.connection() as conn:
            due = query(
                conn,
                "claim_deliveries",
                {"limit": free, "lease": self.lease_seconds, "per_account": 1, "busy": busy},
            ).fetchall()
        futures = []
        for row in due:
            with self._lock:
                self._in_flight[row["account_id"]] += 1
            future = self.senders.submit(self._attempt, row)
            future.add_done_callback(lambda done, account=row["account_id"]: self._release(account, done))
            futures.append(future)
        return futures

    def _release(self, account: int, done: Future) -> None:
        if not done.cancelled() and done.exception() is not None:
            # The result could not be recorded (PostgreSQL away): the row is attempted again when its lease ends.
            log.warning("recording a delivery attempt failed: %s", type(done.exception()).__name__)
        with self._lock:
            self._in_flight[account] -= 1
            if self._in_flight[account] <= 0:
                del self._in_flight[account]
        self._slot_freed.set()

    def deliver_once(self, batch: int = 20) -> int:
        """One step (tests, and the shape of a pass): lease up to batch due deliveries at once, attempt them on the
        senders and wait for every one; return how many were leased."""
        with self.db.connection() as conn:
            due = query(
                conn,
                "claim_deliveries",
                {"limit": batch, "lease": self.lease_seconds, "per_account": batch, "busy": []},
            ).fetchall()
        for future in [self.senders.submit(self._attempt, row) for row in due]:
            future.result()
        return len(due)

    @staticmethod
    def _endpoint(row: dict) -> str:
        return f"webhook:{row['webhook_id']}" if row["webhook_id"] else f"whatsapp:{row['account_id']}"

    def _attempt(self, row: dict) -> None:
        """One attempt, always ending in a recorded result (delivered, retry later, or failed); its log lines name
        the request that caused the event."""
        token = logs.request_id.set(row["payload"].get("request_id"))
        try:
            self._deliver(row)
        finally:
            logs.request_id.reset(token)

    def _deliver(self, row: dict) -> None:
        endpoint = self._endpoint(row)
        if not self.breakers.allows(endpoint):
            return  # not an attempt: the row stays leased and comes back when the lease ends
        started = time.monotonic()
        answered = True
        try:
            if row["url"]:
                delivered, status, error, retryable = self._post_webhook(row)
            elif row["phone_number_id"]:
                delivered, status, error, retryable = self._post_whatsapp(row)
            else:  # the WhatsApp settings were removed after the event was queued
                delivered, status, error, retryable = False, None, "WhatsApp Business is no longer configured", False
            answered = status is not None and status < 500
        except (requests.RequestException, pinned.PostFailed) as exc:
            delivered, status, error, retryable, answered = False, None, str(exc) or type(exc).__name__, True, False
        except SecretsKeyMissing as exc:  # the operator may still provide the key: retry
            delivered, status, error, retryable = False, None, str(exc), True
        except Exception as exc:
            # Anything else will not fix itself by retrying (a token requests cannot send, …): record it and stop.
            # Only the exception's type is logged: its message may quote what it could not encode.
            log.warning("delivery %s failed: %s", row["id"], type(exc).__name__)
            delivered, status, error, retryable = False, None, f"unexpected error: {type(exc).__name__}", False
        self.breakers.record(endpoint, answered)
        self._finish(row, delivered, status, error, retryable, started)

    def _finish(self, row: dict, delivered: bool, status, error, retryable: bool, started: float) -> None:
        attempts = row["attempts"] + 1
        retry_at = None
        if not delivered and retryable and attempts < self.max_attempts:
            delay = min(self.retry_base * 2 ** (attempts - 1), 3600) * random.uniform(0.8, 1.2)  # noqa: S311
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        DELIVERIES.labels("delivered" if delivered else ("retry" if retry_at else "failed")).inc()
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
        try:  # resolved and checked at each call (DNS may have changed), and connected to that very address
            target = resolve(row["url"], allow_private=self.allow_private)
        except RefusedAddress as exc:
            return False, None, f"refused: {exc}", False
        body = json.dumps(row["payload"], separators=(",", ":"), default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Chatlink-Webhooks/1",
            "X-Chatlink-Event-Id": str(row["event_id"]),
            "X-Chatlink-Event-Type": row["event_type"],
            "X-Chatlink-Signature": sign(self.box.open(row["secret"]), int(time.time()), body),
        }
        if row["payload"].get("request_id"):
            headers["X-Request-Id"] = row["payload"]["request_id"]
        status = pinned.post(target, body, headers, self.timeout)
        ok = 200 <= status < 300
        # 4xx other than timeouts/throttling mean the receiver refuses this event; keep trying anyway (it may be
        # deploying), up to the attempt limit — a receiver that is down must still get every event.
        return ok, status, None if ok else f"HTTP {status}", True

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
            headers={"Authorization": f"Bearer {self.box.open(row['access_token'])}"},
            allow_redirects=False,
        )
        if response.status_code == 200:
            return True, 200, None, False
        try:
            error = response.json()["error"]
            code, message = int(error.get("code", 0)), str(error.get("message", ""))[:200]
        except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, no "error", or not an object
            code, message = 0, "unreadable error body"
        retryable = response.status_code >= 500 or response.status_code == 429 or code in WHATSAPP_RETRYABLE
        return False, response.status_code, f"code {code}: {message}", retryable

    def observe(self) -> None:
        """The outbox's backlog and the age of its oldest due delivery, for /metrics."""
        with self.db.connection() as conn:
            stats = query(conn, "outbox_stats").fetchone()
        OUTBOX_BACKLOG.set(stats["backlog"])
        OUTBOX_OLDEST_DUE.set(stats["oldest_due_seconds"])

    def run(self) -> None:
        """Until stopped: keep the senders busy, leasing one row per account at a time (round-robin), publish the
        outbox's figures every few seconds, and back off while PostgreSQL is unavailable, read-only or
        misconfigured (a lease it cannot write is simply retried)."""
        last_observed, failures = 0.0, 0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - last_observed >= 5:
                    last_observed = time.monotonic()
                    self.observe()
                if not self.dispatch():
                    # Nothing due or no free sender: wait for a sender to finish, or a second for new rows.
                    self._slot_freed.wait(1)
                    self._slot_freed.clear()
                failures = 0
            except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:
                failures += 1
                POSTGRES_ERRORS.labels("deliverer").inc()
                if is_row_error(exc):  # one outbox row PostgreSQL refuses: a bug to see, not a pause
                    log.exception("outbox deliverer: a row was refused; retrying")
                else:
                    log.warning("outbox deliverer waiting for PostgreSQL: %s", type(exc).__name__)
                self.backoff(failures)
            except Exception:
                failures += 1
                log.exception("outbox deliverer failed; retrying")
                self.backoff(failures)

    def stop(self) -> None:
        """Stop leasing, and let the attempts in flight finish (bounded by the join time)."""
        super().stop()
        self.senders.shutdown(wait=False, cancel_futures=True)
