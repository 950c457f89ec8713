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
from dataclasses import dataclass

import orjson

from aigw.money import fee_microcents
from extproc.admission import RESERVATION_TTL_MS, Ticket
from extproc.limits import LimitStore, LimitStoreUnavailable, SettleRequest
from extproc.metering import Usage

log = logging.getLogger(__name__)
_RETRY_INTERVAL_S = 1.0


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
    the Redis round trip; the reservation covers the request until the settle lands) and keeps
    retries alive until they succeed or expire."""

    def __init__(self, store: LimitStore) -> None:
        self._store = store
        self._pending: set[asyncio.Task[None]] = set()

    def settle_later(self, request: SettleRequest) -> None:
        """Settle from a task of its own (which also outlives a cancelled stream's task)."""
        task = asyncio.get_running_loop().create_task(self._retry(request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float) -> None:
        """Wait for pending settles at shutdown."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout_s)

    async def _retry(self, request: SettleRequest) -> None:
        attempts = int(RESERVATION_TTL_MS / 1000 / _RETRY_INTERVAL_S)
        for attempt in range(attempts):
            try:
                await self._store.settle(request)
                return
            except LimitStoreUnavailable:
                if attempt == 0:
                    log.warning("settle of %s deferred: Redis unavailable", request.request_id)
                await asyncio.sleep(_RETRY_INTERVAL_S)
        log.error(
            "usage of request %s lost: Redis unavailable for its whole reservation",
            request.request_id,
        )
