"""Settle: when a response ends, turn what the provider reported into money, release the
reservation, add the actual cost and emit the usage event — one Lua round trip
(`LimitStore.settle`).

Pricing of what was used:
- a provider error (status >= 400) costs nothing: providers do not bill failed requests;
- a response that reported its usage costs exactly that (the tier chosen by its input);
- a stream cut off before its usage arrived (client gone, provider reset) is charged its worst
  case — the input bound and the full output limit — the most it could have cost; that is never
  more than was reserved, so the cap still holds.

A settle that cannot reach Redis is retried in the background until the reservation would have
expired, so a short Redis outage loses no usage record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from aigw.money import fee_microcents
from extproc.admission import RESERVATION_TTL_MS, Ticket
from extproc.limits import LimitStore, LimitStoreUnavailable, SettleRequest
from extproc.metering import Usage

log = logging.getLogger(__name__)
_RETRY_INTERVAL_S = 1.0
SETTLE_MAY_WAIT_S = 0.005
"""How long a settle that finds Redis free waits for the next admission to go with it (one
round trip for both when requests come one at a time); its reservation covers the request
meanwhile, as it does until any settle lands."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, as the response phases saw it."""

    status: int
    usage: Usage
    aborted: bool
    finished_ms: int


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """Who asked for what; the ledger row's identity."""

    request_id: str
    parent_id: str
    sub_account_id: str | None
    tags: tuple[str, ...]
    model: str
    provider: str
    endpoint: str
    stream: bool
    byok: bool


def billed_tokens(ticket: Ticket, outcome: Outcome) -> Usage:
    if outcome.status >= 400:
        return Usage()
    usage = outcome.usage
    if outcome.aborted and not (usage.reported and usage.output_tokens):
        return Usage(
            input_tokens=usage.input_tokens if usage.reported else ticket.input_bound,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=ticket.output_tokens,
            reported=usage.reported,
        )
    return usage


def settle_request(ticket: Ticket, facts: RequestFacts, outcome: Outcome) -> SettleRequest:
    tokens = billed_tokens(ticket, outcome)
    cost = ticket.pricing.cost_microcents(
        tokens.input_tokens,
        tokens.cached_input_tokens,
        tokens.cache_write_tokens,
        tokens.output_tokens,
    )
    fee = fee_microcents(cost, ticket.fee_percent)
    total_tokens = (
        tokens.input_tokens
        + tokens.cached_input_tokens
        + tokens.cache_write_tokens
        + tokens.output_tokens
    )
    event = {
        "type": "usage",
        "request_id": facts.request_id,
        "parent_id": facts.parent_id,
        "sub_account_id": facts.sub_account_id,
        "tags": list(facts.tags),
        "model": facts.model,
        "provider": facts.provider,
        "endpoint": facts.endpoint,
        "status": outcome.status,
        "input_tokens": tokens.input_tokens,
        "cached_input_tokens": tokens.cached_input_tokens,
        "cache_write_tokens": tokens.cache_write_tokens,
        "output_tokens": tokens.output_tokens,
        "cost_microcents": cost,
        "fee_microcents": fee,
        "byok": facts.byok,
        "stream": facts.stream,
        "aborted": outcome.aborted,
        "latency_ms": max(outcome.finished_ms - ticket.started_ms, 0),
        "started_at": ticket.started_ms,
        "finished_at": outcome.finished_ms,
        "period": ticket.period.id,
    }
    return SettleRequest(
        owner_id=ticket.owner_id,
        parent_id=facts.parent_id,
        request_id=facts.request_id,
        admitted_ms=ticket.started_ms,
        now_ms=outcome.finished_ms,
        period_id=ticket.period.id,
        period_end_ms=ticket.period.end_ms,
        cap_microcents=ticket.cap_microcents,
        cost_microcents=cost + fee,
        actual_tokens=total_tokens,
        tpm_input_tokens=ticket.input_bound,
        tpm=ticket.tpm,
        event=orjson.dumps(event),
    )


class Settler:
    """Settles requests in the background (the reply that ends a response does not wait for
    the Redis round trip; the reservation covers the request until the settle lands).

    Settles that arrive while a batch is on its way to Redis go together in the next one: one
    task and one pipeline per batch, not per request; a batch that finds Redis free rides with
    the next admission if one comes within `SETTLE_MAY_WAIT_S`. A settle that Redis failed is
    retried on its own until it succeeds or its reservation would have expired."""

    def __init__(self, store: LimitStore) -> None:
        self._store = store
        self._queue: list[SettleRequest] = []
        self._flushing = False
        self._pending: set[asyncio.Task[None]] = set()

    def settle_later(self, request: SettleRequest) -> None:
        """Queue `request`; it is sent from a task of the settler's own (which also outlives a
        cancelled stream's task)."""
        self._queue.append(request)
        if not self._flushing:
            self._flushing = True
            self._start(self._flush())

    async def drain(self, timeout_s: float) -> None:
        """Wait for queued and retried settles at shutdown, at most `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._pending:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.wait(set(self._pending), timeout=left)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._store.settle_many(batch, SETTLE_MAY_WAIT_S)
                except Exception:
                    log.exception("a batch of %d settles failed: retrying each", len(batch))
                    results = [LimitStoreUnavailable("batch failed")] * len(batch)
                for request, result in zip(batch, results, strict=True):
                    if isinstance(result, LimitStoreUnavailable):
                        self._start(self._retry(request))
        finally:
            self._flushing = False

    async def _retry(self, request: SettleRequest) -> None:
        """A settle whose first attempt failed: again every `_RETRY_INTERVAL_S` until the
        reservation would have expired."""
        log.warning("settle of %s deferred: Redis unavailable", request.request_id)
        for _ in range(int(RESERVATION_TTL_MS / 1000 / _RETRY_INTERVAL_S) - 1):
            await asyncio.sleep(_RETRY_INTERVAL_S)
            try:
                await self._store.settle(request)
                return
            except LimitStoreUnavailable:
                continue
        log.error(
            "usage of request %s lost: Redis unavailable for its whole reservation",
            request.request_id,
        )
