"""Budget periods and the live `spend` of a sub-account (API.md §5).

Periods are UTC: `monthly` is the calendar month, `weekly` starts on Monday, `daily` at
midnight, `total` runs from the sub-account's creation and never resets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from controlplane.clock import iso_z
from controlplane.models import SubAccount


def period_bounds(
    budget_period: str, created_at: datetime, now: datetime
) -> tuple[datetime, datetime | None]:
    """(start, end) of the period that contains `now`; end is None for `total`."""
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget_period == "daily":
        return midnight, midnight + timedelta(days=1)
    if budget_period == "weekly":
        start = midnight - timedelta(days=midnight.weekday())
        return start, start + timedelta(days=7)
    if budget_period == "monthly":
        start = midnight.replace(day=1)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        return start, start.replace(month=start.month + 1)
    if budget_period == "total":
        return created_at.astimezone(UTC), None
    raise ValueError(f"unknown budget period {budget_period!r}")


async def spent_cents(redis: aioredis.Redis, owner_id: str, period_start: datetime) -> int:
    """What the owner has spent in the period starting at `period_start`.

    Seam for the metering issue, which will read the period's spend counter from Redis. Nothing
    is metered yet, so the true current value is 0.
    """
    return 0


async def spend_view(redis: aioredis.Redis, sub: SubAccount, now: datetime) -> dict[str, Any]:
    """The `spend` object of a sub-account at `now`."""
    start, end = period_bounds(sub.budget_period, sub.created_at, now)
    spent = await spent_cents(redis, sub.id, start)
    remaining = None if sub.spend_cap_cents is None else max(sub.spend_cap_cents - spent, 0)
    return {
        "period_start": iso_z(start),
        "resets_at": iso_z(end),
        "spent_cents": spent,
        "remaining_cents": remaining,
    }
