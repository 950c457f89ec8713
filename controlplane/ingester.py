"""The usage ingester: the sharded Redis usage streams (`aigw:{u<n>}:usage`, every shard) → the
PostgreSQL ledger, its daily roll-up and the event outbox (docs/internals.md, "Usage streams";
ARCHITECTURE.md, workers).

    ingester = Ingester(pool, redis)
    await ingester.run_once()      # one batch; returns how many entries it settled
    await ingester.run()           # forever, until stop(); retries every failure with backoff

Delivery is at least once; writing is idempotent, so every fact lands exactly once:
- every shard's entries are read with XREADGROUP in that stream's consumer group `ingest`
  (`controlplane.usage_consumer`: groups, own pending entries, claims, acks — per shard), up to
  `batch_size` of each shard at a time; when no shard has anything, the round waits `block_ms`,
  and after a round of fewer than `batch_size` entries in all (the streams nearly drained) the
  next one waits `gather_ms`, so that a steady flow is stored in batches of some size rather
  than a few entries per transaction (the ledger lags by at most that much more);
- one PostgreSQL transaction per batch inserts the ledger rows (ON CONFLICT (request_id) DO
  NOTHING), adds *only the rows actually inserted* to `usage_daily`, and inserts the events
  (ON CONFLICT (dedupe_key) DO NOTHING) and dead letters;
- after the commit the entries are XACKed and XDELed together (atomically per shard), so the
  streams stay bounded. A crash or a Redis error between commit and ack re-delivers the batch,
  which then changes nothing.
- an entry the ingester cannot read (bad JSON, missing or ill-typed fields) is logged by its id
  and reason (never its content), stored in `usage_dead_letters` (as `<stream>:<id>`) in the
  same transaction, and acked: it never blocks its stream. If PostgreSQL refuses a whole batch
  for its data (not for being down), the batch is retried entry by entry and the entries it
  still refuses become dead letters.
- PostgreSQL down: nothing is acked; the entries stay pending for this consumer, which reads its
  own pending entries first on every round until they are stored. Redis down: the round fails
  and is retried. Both with exponential backoff, logged once per outage.
- entries pending for longer than `claim_idle_ms` at another consumer (a control plane that
  died mid-batch) are taken over with XAUTOCLAIM; consumers left with nothing pending and idle
  for an hour are removed from the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from aigw import keyspace
from aigw.keys import new_id
from aigw.redis_client import REDIS_ERRORS, AsyncRedis
from controlplane.clock import Clock, utc_now
from controlplane.spend_rebuild import lock_ingest
from controlplane.usage_consumer import Entry, UsageConsumer
from controlplane.usage_entries import EventRow, MalformedEntry, Parsed, dumps, parse_entry

log = logging.getLogger(__name__)

GROUP = keyspace.USAGE_CONSUMER_GROUP
BATCH_SIZE = 500
BLOCK_MS = 200
GATHER_MS = 100
CLAIM_IDLE_MS = 30_000
ACQUIRE_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
DEAD_LETTER_BYTES = 8 * 1024
# PostgreSQL refusing the *data* of a batch (class 22 data exception, 23 integrity, 54 program
# limit such as an oversized index row): retry entry by entry instead of forever.
_DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)

_LEDGER_COLUMNS = (
    "request_id, parent_id, sub_account_id, tags, model, provider, endpoint, status,"
    " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost_microcents,"
    " fee_microcents, byok, stream, aborted, latency_ms, started_at, finished_at, period"
)
_DAILY_SUMS = (
    "requests",
    "failed_requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_microcents",
    "fee_microcents",
    "byok_requests",
    "byok_cost_microcents",
)
# One statement: ledger rows in, and the roll-up from exactly the rows that went in.
_INSERT_USAGE = f"""
WITH inserted AS (
    INSERT INTO usage_ledger ({_LEDGER_COLUMNS})
    SELECT {_LEDGER_COLUMNS} FROM jsonb_populate_recordset(NULL::usage_ledger, $1::jsonb)
    ON CONFLICT (request_id) DO NOTHING
    RETURNING *
), daily AS (
    INSERT INTO usage_daily (day, parent_id, sub_account_id, model, tags, {", ".join(_DAILY_SUMS)})
    SELECT (finished_at AT TIME ZONE 'UTC')::date, parent_id, sub_account_id, model,
           (SELECT coalesce(array_agg(DISTINCT tag ORDER BY tag), '{{}}') FROM unnest(tags) tag),
           count(*), count(*) FILTER (WHERE status >= 400 OR status = 0),
           sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens),
           sum(output_tokens), sum(cost_microcents), sum(fee_microcents),
           count(*) FILTER (WHERE byok), coalesce(sum(cost_microcents) FILTER (WHERE byok), 0)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT ON CONSTRAINT usage_daily_key DO UPDATE SET
        {", ".join(f"{c} = usage_daily.{c} + EXCLUDED.{c}" for c in _DAILY_SUMS)}
)
SELECT request_id FROM inserted
"""
# Events get the sub-account's name and default tag (the webhook body's `data`), and its cap
# when the entry did not say.
_INSERT_EVENTS = """
INSERT INTO events (id, type, parent_id, sub_account_id, dedupe_key, payload, created_at)
SELECT e.id, e.type, coalesce(e.parent_id, s.parent_id), e.sub_account_id, e.dedupe_key,
       jsonb_build_object('name', s.name, 'default_tag', s.default_tag)
         || CASE WHEN s.id IS NOT NULL AND NOT e.payload ? 'spend_cap_cents'
                      AND e.type LIKE 'sub_account.budget.%'
                 THEN jsonb_build_object('spend_cap_cents', s.spend_cap_cents)
                 ELSE '{}'::jsonb END
         || e.payload,
       e.created_at
FROM jsonb_to_recordset($1::jsonb) AS e(id text, type text, parent_id text,
     sub_account_id text, dedupe_key text, payload jsonb, created_at timestamptz)
LEFT JOIN sub_accounts s ON s.id = e.sub_account_id
WHERE coalesce(e.parent_id, s.parent_id) IS NOT NULL
ON CONFLICT (dedupe_key) DO NOTHING
"""
_INSERT_DEAD = """
INSERT INTO usage_dead_letters (stream_id, reason, raw, received_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
ON CONFLICT (stream_id) DO NOTHING
"""


@dataclass(slots=True)
class IngestStats:
    """Counters since start (for logs and tests)."""

    batches: int = 0
    entries: int = 0
    inserted: int = 0
    duplicates: int = 0
    events: int = 0
    malformed: int = 0
    trimmed: int = 0
    claimed: int = 0


@dataclass(slots=True)
class _DeadLetter:
    stream_id: str
    reason: str
    raw: str


def default_consumer_name() -> str:
    """Unique per process: a restarted control plane's leftovers are claimed, not re-read."""
    return f"cp-{socket.gethostname()}-{os.getpid()}-{new_id('c')[-8:]}"


class Ingester:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: AsyncRedis,
        *,
        streams: Sequence[str] | None = None,
        group: str = GROUP,
        consumer: str | None = None,
        batch_size: int = BATCH_SIZE,
        block_ms: int = BLOCK_MS,
        gather_ms: int = GATHER_MS,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._streams = UsageConsumer(
            redis,
            keyspace.usage_streams() if streams is None else streams,
            group,
            consumer or default_consumer_name(),
            batch_size,
            claim_idle_ms,
        )
        self._block_s = block_ms / 1000
        self._gather_s = gather_ms / 1000
        self._batch_size = batch_size
        self._clock = clock
        self._stopping = asyncio.Event()
        self.stats = IngestStats()

    # Running

    async def run(self) -> None:
        """Ingest until `stop()`; every failure is logged once per outage and retried."""
        delay = BACKOFF_MIN_S
        failing = False
        while not self._stopping.is_set():
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a cancel a library swallowed
                raise asyncio.CancelledError
            try:
                settled = await self.run_once()
            except Exception as exc:  # the worker must outlive any one failure
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # cancelled mid-query: the driver may report it as its own error
                    raise asyncio.CancelledError from exc
                if not failing:
                    log.warning(
                        "usage ingester cannot proceed (%s); retrying",
                        _describe(exc),
                        exc_info=not isinstance(exc, _OUTAGES),
                    )
                failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if failing:
                log.info("usage ingester running again")
            failing = False
            delay = BACKOFF_MIN_S
            if 0 < settled < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._gather_s)

    def stop(self) -> None:
        """Finish the current batch, then return from `run()`."""
        self._stopping.set()

    async def run_once(self) -> int:
        """Read one batch over every shard (own pending entries first, then entries claimed from
        dead consumers, then new ones; with nothing anywhere, wait up to `block_ms` — `stop()`
        ends the wait at once), store it in one transaction, ack it.
        Returns the number of entries settled (0: nothing to do or not ready)."""
        entries = await self._streams.next_batch()
        self.stats.claimed = self._streams.claimed
        if not entries:
            if not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._block_s)
            return 0
        try:
            await self._store(entries)
            await self._ack(entries)
        except BaseException:
            self._streams.keep_pending(entries)  # read them again first
            raise
        self.stats.batches += 1
        self.stats.entries += len(entries)
        return len(entries)

    async def _ack(self, entries: Sequence[Entry]) -> None:
        await self._streams.ack(entries)

    # PostgreSQL

    async def _store(self, entries: Sequence[Entry]) -> None:
        items = [self._parse(entry) for entry in entries]
        try:
            await self._write(items)
        except _DATA_ERRORS as exc:
            log.warning("PostgreSQL refused a usage batch (%s); storing entry by entry", exc)
            for entry, item in zip(entries, items, strict=True):
                try:
                    await self._write([item])
                except _DATA_ERRORS as entry_exc:
                    reason = f"refused by PostgreSQL ({entry_exc.sqlstate})"
                    await self._write([self._dead_letter(entry, reason)])

    def _parse(self, entry: Entry) -> Parsed | _DeadLetter | None:
        stream, stream_id, fields = entry
        if not fields:  # trimmed or deleted before it was ingested: nothing left to read
            self.stats.trimmed += 1
            log.warning(
                "usage entry %s of %s was deleted from the stream before ingestion",
                stream_id,
                stream,
            )
            return None
        try:
            return parse_entry(stream_id, fields)
        except MalformedEntry as exc:
            return self._dead_letter(entry, str(exc))

    def _dead_letter(self, entry: Entry, reason: str) -> _DeadLetter:
        stream, stream_id, fields = entry
        self.stats.malformed += 1
        log.warning("usage entry %s of %s skipped: %s", stream_id, stream, reason)
        raw = b"; ".join(k + b"=" + v for k, v in fields.items())
        text = raw[:DEAD_LETTER_BYTES].decode("utf-8", "replace").replace("\x00", "\\0")
        return _DeadLetter(dead_letter_id(stream, stream_id), reason, text)

    async def _write(self, items: Sequence[Parsed | _DeadLetter | None]) -> None:
        """Everything of these entries in one transaction."""
        usage: dict[str, dict[str, Any]] = {}  # the first of each request id / dedupe key
        events: dict[str, EventRow] = {}
        dead: list[_DeadLetter] = []
        ledger_rows = 0
        for item in items:
            if isinstance(item, _DeadLetter):
                dead.append(item)
            elif item is not None:
                if item.ledger is not None:
                    ledger_rows += 1
                    usage.setdefault(item.ledger["request_id"], item.ledger)
                for event in item.events:
                    events.setdefault(event.dedupe_key, event)
        if not (usage or events or dead):
            return
        now = self._clock()
        async with (
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            conn.transaction(),
        ):
            await lock_ingest(conn)  # never while a spend rebuild reads (spend_rebuild.py)
            inserted = 0
            if usage:
                rows = await conn.fetch(_INSERT_USAGE, dumps(list(usage.values())))
                inserted = len(rows)
            if events:
                rows_json = dumps(
                    [
                        {
                            "id": new_id("evt"),
                            "type": event.type,
                            "parent_id": event.parent_id,
                            "sub_account_id": event.sub_account_id,
                            "dedupe_key": event.dedupe_key,
                            "payload": event.payload,
                            "created_at": event.created_at.isoformat(),
                        }
                        for event in events.values()
                    ]
                )
                status = await conn.execute(_INSERT_EVENTS, rows_json)
                self.stats.events += int(status.rsplit(" ", 1)[-1])
            if dead:
                await conn.execute(
                    _INSERT_DEAD,
                    [d.stream_id for d in dead],
                    [d.reason for d in dead],
                    [d.raw for d in dead],
                    [now] * len(dead),
                )
        self.stats.inserted += inserted
        self.stats.duplicates += ledger_rows - inserted


def dead_letter_id(stream: str, stream_id: str) -> str:
    """The `usage_dead_letters.stream_id` of an entry: ids are unique per stream only."""
    return f"{stream}:{stream_id}"


_OUTAGES = (*REDIS_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError)


def _describe(exc: BaseException) -> str:
    """The class and message (drivers do not put credentials in theirs), cut short."""
    return f"{type(exc).__name__}: {exc}"[:300]
