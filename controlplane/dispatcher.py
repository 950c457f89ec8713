"""The webhook dispatcher: due deliveries (migration 004) → signed POSTs → the delivery log.

    dispatcher = Dispatcher(pool, secret_box(config), dsn=database_url)
    task = asyncio.create_task(dispatcher.run())      # until stop()
    dispatcher.stop(); await task

Delivery follows the Standard Webhooks specification (signed with the `standardwebhooks`
library): headers `webhook-id` (the event id: the same for every attempt, whichever process
sends it), `webhook-timestamp` (of the attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256
of "id.timestamp.body">` under the endpoint's secret). The body is
`{"type", "timestamp", "data"}`. A 2xx answer within `timeout_s` delivers; anything else (other
status, timeout, connection error, redirect) is retried after `schedule[attempt - 1]` seconds
± `jitter`, and after the last one the delivery is `failed` (docs/webhooks.md).

At least once, never lost:
- rows are claimed with `FOR UPDATE SKIP LOCKED` under a lease (`lease_s`, longer than an
  attempt can take), so several control planes never send the same row at the same time, and a
  row whose dispatcher died mid-attempt is taken again when its lease ends — with the same id;
- `stop()` lets attempts in flight finish for `stop_grace_s`, then cancels them and hands
  their rows back, due at once.
A slow receiver cannot hold up the others: each endpoint has at most `per_endpoint` attempts in
flight (per process) and the claim takes rows endpoint by endpoint; every attempt has a hard
`timeout_s`; at most `max_in_flight` attempts run at once. Wake-ups: NOTIFY `aigw_webhooks`
(sent by the fan-out trigger and the test route) when `dsn` is given, else every
`poll_interval_s`, and when the soonest retry this process scheduled falls due.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from standardwebhooks import Webhook

from aigw.keys import new_id
from controlplane import webhook_store as store
from controlplane.clock import Clock, utc_now
from controlplane.webhook_events import event_body
from controlplane.webhook_secrets import SecretBox, SecretUnavailable

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO; a webhook URL may carry a token in its query.
logging.getLogger("httpx").setLevel(logging.WARNING)

CHANNEL = "aigw_webhooks"
# Seconds before attempt 2, 3, …: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h.
# Eleven attempts over about 24 h; then the delivery is failed.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
USER_AGENT = "aigw-webhooks/0.1"
_ERROR_CHARS = 300
_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2  # each delay is multiplied by a uniform factor in [1 - j, 1 + j]
    timeout_s: float = 10.0  # one attempt, connect to last header byte
    per_endpoint: int = 4
    max_in_flight: int = 64
    poll_interval_s: float = 1.0
    lease_s: float = 60.0  # must exceed timeout_s: the row stays ours while we send
    stop_grace_s: float = 3.0


def retry_delay(
    attempt: int, settings: DispatchSettings, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds from the end of attempt `attempt` (1-based) to the next; None after the last."""
    if attempt > len(settings.schedule):
        return None
    factor = 1 + settings.jitter * (2 * rand() - 1)
    return max(settings.schedule[attempt - 1] * factor, 0.0)


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        box: SecretBox,
        *,
        dsn: str | None = None,
        settings: DispatchSettings | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Clock = utc_now,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._pool = pool
        self._box = box
        self._dsn = dsn
        self.settings = settings or DispatchSettings()
        self._client = client
        self._own_client = client is None
        self._clock = clock
        self._rand = rand
        self._name = new_id("disp")
        self._leases = itertools.count(1)
        self._tasks: dict[asyncio.Task[None], store.Job] = {}
        self._busy: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._retries: list[float] = []  # heap: monotonic times of the retries we scheduled
        self._listener: asyncpg.Connection | None = None
        self._listen_retry_at = 0.0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        """Return from `run()` after the attempts in flight (bounded by `stop_grace_s`)."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until `stop()`; every failure is logged once per outage and retried."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.timeout_s,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=self.settings.max_in_flight),
                headers={"user-agent": USER_AGENT},
            )
        delay, failing = 0.1, False
        try:
            while not self._stopping.is_set():
                await self._listen()
                self._wake.clear()
                try:
                    claimed = await self.run_once()
                except Exception as exc:  # the worker must outlive any one failure
                    if not failing:
                        log.warning("webhook dispatcher failing (%s); retrying", _describe(exc))
                    failing = True
                    await self._sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                if failing:
                    log.info("webhook dispatcher running again")
                failing, delay = False, 0.1
                if claimed and self.in_flight < self.settings.max_in_flight:
                    continue  # more may be due right now
                await self._sleep(self._wait_s())
        finally:
            await self._shutdown()

    async def run_once(self) -> int:
        """Claim what is due and free to send, start its attempts; returns how many."""
        room = self.settings.max_in_flight - len(self._tasks)
        if room <= 0:
            return 0
        jobs = await store.claim(
            self._pool,
            lease=f"{self._name}:{next(self._leases)}",
            lease_s=self.settings.lease_s,
            per_endpoint=self.settings.per_endpoint,
            limit=room,
            busy={endpoint: n for endpoint, n in self._busy.items() if n > 0},
        )
        for job in jobs:
            self._busy[job.endpoint_id] += 1
            task = asyncio.create_task(self._attempt(job))
            self._tasks[task] = job
            task.add_done_callback(self._attempt_done)
        return len(jobs)

    # One attempt

    async def _attempt(self, job: store.Job) -> None:
        started, t0 = self._clock(), time.monotonic()
        status_code, error = await self._send(job, started)
        duration_ms = int((time.monotonic() - t0) * 1000)
        delivered = status_code is not None and 200 <= status_code < 300
        retry_in = None if delivered else retry_delay(job.attempt, self.settings, self._rand)
        outcome = "delivered" if delivered else "failed" if retry_in is None else "retrying"
        try:
            recorded = await store.finish(
                self._pool,
                job,
                attempt_id=new_id("whd"),
                outcome=outcome,
                retry_in_s=retry_in or 0.0,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
                started_at=started,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # the lease runs out and the row is attempted again, under the same webhook-id
            log.warning("webhook delivery %s: outcome not recorded (%s)", job.delivery_id, exc)
            return
        if not recorded:
            log.info("webhook delivery %s was taken over or cancelled", job.delivery_id)
        elif outcome == "retrying" and retry_in is not None:
            self._schedule_wake(retry_in)
        elif outcome == "failed":
            log.warning(
                "webhook %s to endpoint %s failed after %d attempts (%s)",
                job.event_id,
                job.endpoint_id,
                job.attempt,
                error,
            )

    async def _send(self, job: store.Job, now: datetime) -> tuple[int | None, str | None]:
        """POST the signed event; (status code, error) — the URL and secret are never logged."""
        if job.payload is None or job.event_at is None:
            return None, "the event is no longer stored"
        try:
            secret = self._box.open(job.sealed_secret, job.endpoint_id)
        except SecretUnavailable:
            return None, "the endpoint secret cannot be opened (secrets_key changed or missing)"
        body = event_body(job.event_type, job.event_at, job.payload)
        headers = {
            "content-type": "application/json",
            "webhook-id": job.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(job.event_id, now, body),
        }
        assert self._client is not None
        try:
            async with (
                asyncio.timeout(self.settings.timeout_s),
                self._client.stream("POST", job.url, content=body, headers=headers) as response,
            ):
                code = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return None, f"timeout after {self.settings.timeout_s:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        return code, None if 200 <= code < 300 else f"HTTP {code}"

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        job = self._tasks.pop(task, None)
        if job is not None:
            self._busy[job.endpoint_id] -= 1
            if self._busy[job.endpoint_id] <= 0:
                del self._busy[job.endpoint_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt crashed", exc_info=task.exception())
        self._wake.set()  # a slot is free

    # Waiting

    def _schedule_wake(self, in_s: float) -> None:
        heapq.heappush(self._retries, time.monotonic() + in_s)
        self._wake.set()  # recompute the wait

    def _wait_s(self) -> float:
        """Until the next poll, or the soonest retry this process scheduled if sooner."""
        now = time.monotonic()
        due = False
        while self._retries and self._retries[0] <= now:
            heapq.heappop(self._retries)
            due = True
        if due:
            return 0.0
        if self._retries:
            return min(self.settings.poll_interval_s, self._retries[0] - now)
        return self.settings.poll_interval_s

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnect (at most every 5 s) when it dropped."""
        if self._dsn is None or time.monotonic() < self._listen_retry_at:
            return
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            conn = await asyncpg.connect(self._dsn, timeout=5)
            await conn.add_listener(CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            self._listen_retry_at = time.monotonic() + 5.0
            log.warning("webhook dispatcher cannot LISTEN (%s); polling", exc)
            return
        self._listener = conn
        self._wake.set()  # whatever was notified while we were not listening

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    # Stopping

    async def _shutdown(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.stop_grace_s)
            unfinished = [self._tasks[task] for task in pending if task in self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            try:
                await asyncio.wait_for(store.release(self._pool, unfinished), 5.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhook deliveries not handed back (%s); their lease ends", exc)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
            self._listener = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None


def _describe(exc: BaseException) -> str:
    """A log-safe description: the class and message of database and network errors only."""
    if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
