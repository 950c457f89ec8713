"""The live `spend` of a sub-account (API.md §5, §6): its budget period and what it has spent.

Periods are UTC (`aigw.periods`): `monthly` is the calendar month, `weekly` starts on Monday,
`daily` at midnight, `total` runs from the sub-account's creation and never resets.

What was spent is read from Redis (`LimitStore.read_spend`: settled cost + fee of the period, in
micro-cents) once the owner's spend is ready there. While it is not (Redis restarted empty, the
rebuild has not run yet) or Redis does not answer, the ledger's sum for the period is shown
instead: the source of truth, behind the live counter only by what is not ingested yet.
Amounts are `Decimal` cents with up to six decimals, exact; `controlplane.responses` writes them
as JSON numbers.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from aigw import keyspace
from aigw.money import MICROCENTS_PER_CENT, microcents_to_cents
from aigw.periods import Period, current_period, period_bounds
from aigw.redis_client import REDIS_ERRORS, AsyncRedis
from controlplane import store
from controlplane.clock import iso_z
from controlplane.models import SubAccount
from extproc.limits import LimitStore, LimitStoreUnavailable

log = logging.getLogger(__name__)

__all__ = ["period_bounds", "spend_view", "spent_cents", "spent_microcents"]


async def spent_microcents(
    redis: AsyncRedis,
    sub_account_id: str,
    period: Period,
    pool: asyncpg.Pool | None = None,
    limits: LimitStore | None = None,
) -> int:
    """Cost + fee the sub-account has settled in `period`, in micro-cents. `limits`: the
    process's `LimitStore` (one is built when not given)."""
    try:
        ready = await redis.hget(keyspace.owner_state(sub_account_id), "ready")
        if ready == b"1" or pool is None:
            limits = limits or LimitStore(redis)
            spent, _reserved = await limits.read_spend(sub_account_id, period.id)
            return spent
    except (*REDIS_ERRORS, LimitStoreUnavailable) as exc:
        if pool is None:
            raise
        log.warning("Redis does not answer (%s); spend read from the ledger", exc)
    sums = await store.ledger_spend(pool, {sub_account_id: period.id})
    return sums.get(sub_account_id, 0)


async def spent_cents(
    redis: AsyncRedis,
    sub_account_id: str,
    period: Period,
    pool: asyncpg.Pool | None = None,
    limits: LimitStore | None = None,
) -> Decimal:
    """`spent_microcents` in cents, exact (up to six decimals)."""
    spent = await spent_microcents(redis, sub_account_id, period, pool, limits)
    return microcents_to_cents(spent)


async def spend_view(
    redis: AsyncRedis,
    sub: SubAccount,
    now: datetime,
    pool: asyncpg.Pool | None = None,
    limits: LimitStore | None = None,
) -> dict[str, Any]:
    """The `spend` object of a sub-account at `now`, read live."""
    period = current_period(sub.budget_period, sub.created_at, now)
    return spend_object(sub, period, await spent_microcents(redis, sub.id, period, pool, limits))


def spend_object(sub: SubAccount, period: Period, spent: int) -> dict[str, Any]:
    """The `spend` object of a sub-account that has spent `spent` micro-cents in `period`."""
    remaining: Decimal | None = None
    if sub.spend_cap_cents is not None:
        cap = sub.spend_cap_cents * MICROCENTS_PER_CENT
        remaining = microcents_to_cents(max(cap - spent, 0))
    return {
        "period_start": iso_z(period.start),
        "resets_at": iso_z(period.end),
        "spent_cents": microcents_to_cents(spent),
        "remaining_cents": remaining,
    }
