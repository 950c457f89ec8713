"""Budget periods (API.md §5): UTC, pure, the clock passed in.

| `budget_period` | period                                 | id           | end            |
|-----------------|----------------------------------------|--------------|----------------|
| `monthly`       | calendar month                         | `2026-11`    | 1st of next    |
| `weekly`        | ISO week, Monday 00:00 to Monday 00:00 | `2026-W48`   | next Monday    |
| `daily`         | midnight to midnight                   | `2026-11-27` | next midnight  |
| `total`         | from the owner's creation, forever     | `total`      | `None`         |

A weekly id uses the ISO year, which differs from the calendar year around New Year
(Monday 2026-12-28 starts `2026-W53`, Monday 2029-12-31 starts `2030-W01`). The id names the
period's keys in Redis and its rows in the ledger, so it must be the same wherever it is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

BUDGET_PERIODS = ("monthly", "weekly", "daily", "total")
TOTAL_PERIOD_ID = "total"


@dataclass(frozen=True, slots=True)
class Period:
    id: str
    start: datetime
    end: datetime | None
    start_ms: int = field(init=False, repr=False, compare=False)
    end_ms: int = field(init=False, repr=False, compare=False)
    """The end in epoch milliseconds, 0 for a period that never ends."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_ms", _epoch_ms(self.start))
        object.__setattr__(self, "end_ms", 0 if self.end is None else _epoch_ms(self.end))


def current_period(budget_period: str, created_at: datetime, now: datetime) -> Period:
    """The period of kind `budget_period` that contains `now` (aware datetimes only)."""
    now = _utc(now, "now")
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget_period == "monthly":
        start = midnight.replace(day=1)
        if start.month == 12:
            end = start.replace(year=start.year + 1, month=1)
        else:
            end = start.replace(month=start.month + 1)
        return Period(f"{start.year:04d}-{start.month:02d}", start, end)
    if budget_period == "weekly":
        start = midnight - timedelta(days=midnight.weekday())
        iso_year, iso_week, _ = start.isocalendar()
        return Period(f"{iso_year:04d}-W{iso_week:02d}", start, start + timedelta(days=7))
    if budget_period == "daily":
        return Period(midnight.strftime("%Y-%m-%d"), midnight, midnight + timedelta(days=1))
    if budget_period == "total":
        return Period(TOTAL_PERIOD_ID, _utc(created_at, "created_at"), None)
    raise ValueError(f"unknown budget period {budget_period!r}")


def period_bounds(
    budget_period: str, created_at: datetime, now: datetime
) -> tuple[datetime, datetime | None]:
    """(start, end) of the period that contains `now`; end is None for `total`."""
    period = current_period(budget_period, created_at, now)
    return period.start, period.end


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment.astimezone(UTC)


def _epoch_ms(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
