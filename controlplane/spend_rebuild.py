"""Rebuild the current-period spend of sub-accounts in Redis from PostgreSQL, for owners whose
`keyspace.owner_state` is not ready (first start, a Redis restarted empty or flushed, a new
sub-account). Admission answers 503 for a capped owner until this ran (docs/internals.md).

    rebuilder = SpendRebuilder(pool, redis, limits)
    await rebuilder.rebuild_all()          # every sub-account (the projector's project_all)
    await rebuilder.rebuild(subs)          # these sub-accounts, if not ready
    await rebuilder.start_fresh(sub)       # a sub-account just created: ready with 0

What is summed: for each owner and its current period id (`aigw.periods.current_period`),

    spent = Σ ledger rows (cost + fee) of that period
          + Σ usage entries still in the owner's usage shard for that owner and period whose
            request id the ledger does not hold yet

and `LimitStore.rebuild_spend` sets it (and marks the owner ready) only if the owner is not
ready. The 80 % / 100 % flags are passed as already fired when the outbox, or an entry still in
the shard, holds that budget event, so a rebuilt period never fires them twice. Only the shards
of the owners being rebuilt are read (`keyspace.owner_usage_stream`): an owner's entries are
never anywhere else.

Ordering (why nothing is missed or counted twice):
- `rebuild_spend` *sets* `spent`. Settles that happened after Redis was emptied have added to
  that fresh counter and appended their entries to the fresh stream; the set replaces the
  counter, so each such request must be in the sum exactly once: either as a ledger row (already
  ingested) or as a stream entry (not yet), never both — the request-id check excludes entries
  already committed but not yet acknowledged.
- The whole read-and-set of a page of owners runs under an exclusive PostgreSQL advisory lock
  that the ingester takes *shared* in each batch transaction (`lock_ingest`). No batch commits
  while the ledger is summed and the stream read, so an entry moves from "stream" to "ledger"
  either before the snapshot (counted as a row) or after the set (counted as an entry, then
  ingested without touching Redis) — it cannot fall between the two nor be seen in both.
- A settle that happens after the set adds to the rebuilt counter: counted once.
- Residual window: a settle between the stream read and the set (milliseconds; after a Redis
  restart only requests admitted before it can still settle for a capped owner) is overwritten
  in Redis; it is never lost from the ledger, and the next rebuild counts it.
- Accepted loss: usage entries a flushed Redis dropped before the ingester read them were never
  stored anywhere; entries the ingester had read but not yet committed when Redis was emptied are
  stored in the ledger but may miss the rebuilt counter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from aigw import keyspace
from aigw.periods import Period, current_period
from aigw.redis_client import AsyncRedis
from controlplane import store
from controlplane.clock import Clock, utc_now
from controlplane.models import SubAccount
from controlplane.usage_entries import BUDGET_EVENTS, MalformedEntry, budget_key, parse_entry
from extproc.limits import LimitStore

log = logging.getLogger(__name__)

INGEST_LOCK = 0x61696777_696E6773  # "aigwings": ingester batches (shared) vs rebuild (exclusive)
PAGE = 500
_STREAM_PAGE = 1000
_CONCURRENCY = 64


async def lock_ingest(conn: asyncpg.Connection) -> None:
    """Taken by each ingester transaction: no batch commits while a rebuild reads."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", INGEST_LOCK)


@dataclass(slots=True)
class _Pending:
    """What the stream still holds for one owner's current period."""

    amounts: dict[str, int] = field(default_factory=dict)  # request id → cost + fee
    fired: set[int] = field(default_factory=set)  # thresholds with a budget entry


class SpendRebuilder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: AsyncRedis,
        limits: LimitStore | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._limits = limits or LimitStore(redis)
        self._clock = clock

    async def rebuild_all(self) -> int:
        """Every sub-account that is not ready; returns how many were rebuilt."""
        rebuilt, after = 0, ""
        while True:
            subs = await store.sub_accounts_page(self._pool, after, PAGE)
            if not subs:
                return rebuilt
            rebuilt += await self.rebuild(subs)
            after = subs[-1].id

    async def rebuild(self, subs: Sequence[SubAccount]) -> int:
        """Those of `subs` that are not ready; returns how many were rebuilt."""
        waiting = await self._not_ready(subs)
        if not waiting:
            return 0
        now = self._clock()
        periods = {s.id: current_period(s.budget_period, s.created_at, now) for s in waiting}
        now_ms = int(now.timestamp() * 1000)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", INGEST_LOCK)
            pending = await self._stream_pending(periods)
            in_ledger = await store.ledger_request_ids(
                conn, [rid for p in pending.values() for rid in p.amounts]
            )
            sums = await store.ledger_spend(conn, {sa: period.id for sa, period in periods.items()})
            keys = [
                budget_key(threshold, sa, period.id)
                for sa, period in periods.items()
                for threshold in BUDGET_EVENTS
            ]
            fired = await store.existing_event_keys(conn, keys)
            plans = []
            for sa, period in periods.items():
                waiting_entries = pending.get(sa, _Pending())
                spent = sums.get(sa, 0) + sum(
                    amount
                    for rid, amount in waiting_entries.amounts.items()
                    if rid not in in_ledger
                )
                flags = {
                    threshold
                    for threshold in BUDGET_EVENTS
                    if threshold in waiting_entries.fired
                    or budget_key(threshold, sa, period.id) in fired
                }
                plans.append((sa, period, spent, flags))
            results = await _bounded(
                self._limits.rebuild_spend(
                    sa,
                    period.id,
                    period.end_ms,
                    spent,
                    now_ms=now_ms,
                    warned=80 in flags,
                    exhausted=100 in flags,
                )
                for sa, period, spent, flags in plans
            )
        rebuilt = sum(1 for done in results if done)
        if rebuilt:
            log.info("rebuilt the current-period spend of %d sub-accounts", rebuilt)
        return rebuilt

    async def start_fresh(self, sub: SubAccount) -> bool:
        """A sub-account that was just created has spent nothing: ready with 0 at once."""
        now = self._clock()
        period = current_period(sub.budget_period, sub.created_at, now)
        now_ms = int(now.timestamp() * 1000)
        return await self._limits.rebuild_spend(sub.id, period.id, period.end_ms, 0, now_ms=now_ms)

    async def _not_ready(self, subs: Sequence[SubAccount]) -> list[SubAccount]:
        pipe = self._redis.pipeline(transaction=False)
        for sub in subs:
            pipe.hget(keyspace.owner_state(sub.id), "ready")
        states = await pipe.execute()
        return [sub for sub, ready in zip(subs, states, strict=True) if ready != b"1"]

    async def _stream_pending(self, periods: dict[str, Period]) -> dict[str, _Pending]:
        """Usage and budget entries of these owners' current periods still in their shards."""
        pending: dict[str, _Pending] = {}
        for stream in sorted({keyspace.owner_usage_stream(sa) for sa in periods}):
            await self._shard_pending(stream, periods, pending)
        return pending

    async def _shard_pending(
        self, stream: str, periods: dict[str, Period], pending: dict[str, _Pending]
    ) -> None:
        """Add what one shard's stream holds for these owners to `pending`."""
        start = "-"
        while True:
            page = await self._redis.xrange(stream, start, "+", count=_STREAM_PAGE)
            for raw_id, fields in page:
                stream_id = raw_id.decode()
                try:
                    parsed = parse_entry(stream_id, fields)
                except MalformedEntry:
                    continue
                ledger = parsed.ledger
                if ledger is not None:
                    sa = ledger["sub_account_id"]
                    if sa in periods and ledger["period"] == periods[sa].id:
                        amount = ledger["cost_microcents"] + ledger["fee_microcents"]
                        pending.setdefault(sa, _Pending()).amounts[ledger["request_id"]] = amount
                for event in parsed.events:
                    sa = event.sub_account_id
                    if sa not in periods:
                        continue
                    for threshold in BUDGET_EVENTS:
                        if event.dedupe_key == budget_key(threshold, sa, periods[sa].id):
                            pending.setdefault(sa, _Pending()).fired.add(threshold)
            if len(page) < _STREAM_PAGE:
                return
            start = "(" + page[-1][0].decode()


async def _bounded(calls: Iterable[Awaitable[bool]]) -> list[bool]:
    """Await the calls with at most `_CONCURRENCY` in flight; results in order."""
    semaphore = asyncio.Semaphore(_CONCURRENCY)

    async def one(call: Awaitable[bool]) -> bool:
        async with semaphore:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
