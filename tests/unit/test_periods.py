"""Budget periods: UTC calendar arithmetic, ids, year and ISO-week edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from aigw.periods import Period, current_period, period_bounds

CREATED = datetime(2025, 6, 15, 8, 30, 12, 345678, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "now", "expected"),
    [
        ("monthly", utc(2026, 11, 27, 10), Period("2026-11", utc(2026, 11, 1), utc(2026, 12, 1))),
        (
            "monthly",
            utc(2026, 12, 31, 23, 59, 59),
            Period("2026-12", utc(2026, 12, 1), utc(2027, 1, 1)),
        ),
        ("monthly", utc(2027, 1, 1), Period("2027-01", utc(2027, 1, 1), utc(2027, 2, 1))),
        ("monthly", utc(2028, 2, 29, 12), Period("2028-02", utc(2028, 2, 1), utc(2028, 3, 1))),
        ("weekly", utc(2026, 11, 27, 10), Period("2026-W48", utc(2026, 11, 23), utc(2026, 11, 30))),
        ("weekly", utc(2026, 11, 23), Period("2026-W48", utc(2026, 11, 23), utc(2026, 11, 30))),
        (
            "weekly",
            utc(2026, 11, 29, 23, 59, 59),
            Period("2026-W48", utc(2026, 11, 23), utc(2026, 11, 30)),
        ),
        (
            "daily",
            utc(2026, 11, 27, 23, 59, 59),
            Period("2026-11-27", utc(2026, 11, 27), utc(2026, 11, 28)),
        ),
        (
            "daily",
            utc(2026, 12, 31, 23, 59),
            Period("2026-12-31", utc(2026, 12, 31), utc(2027, 1, 1)),
        ),
        ("daily", utc(2027, 1, 1), Period("2027-01-01", utc(2027, 1, 1), utc(2027, 1, 2))),
        ("total", utc(2026, 11, 27, 10), Period("total", CREATED, None)),
    ],
)
def test_current_period(kind: str, now: datetime, expected: Period) -> None:
    assert current_period(kind, CREATED, now) == expected


@pytest.mark.parametrize(
    ("now", "period_id", "start"),
    [
        # 2026 has 53 ISO weeks: W53 runs Mon 2026-12-28 .. Sun 2027-01-03, in the ISO year 2026.
        (utc(2026, 12, 28), "2026-W53", utc(2026, 12, 28)),
        (utc(2027, 1, 1, 12), "2026-W53", utc(2026, 12, 28)),
        (utc(2027, 1, 3, 23, 59, 59), "2026-W53", utc(2026, 12, 28)),
        (utc(2027, 1, 4), "2027-W01", utc(2027, 1, 4)),
        # A week 1 that starts in December: Mon 2029-12-31 belongs to ISO year 2030.
        (utc(2029, 12, 31, 8), "2030-W01", utc(2029, 12, 31)),
        (utc(2030, 1, 6, 23), "2030-W01", utc(2029, 12, 31)),
        (utc(2029, 12, 30, 23, 59), "2029-W52", utc(2029, 12, 24)),
        # January days that still belong to the previous ISO year's last week.
        (utc(2021, 1, 3), "2020-W53", utc(2020, 12, 28)),
        (utc(2022, 1, 2), "2021-W52", utc(2021, 12, 27)),
    ],
)
def test_iso_week_edges(now: datetime, period_id: str, start: datetime) -> None:
    assert current_period("weekly", CREATED, now) == Period(period_id, start, start + timedelta(7))


def test_december_to_january_is_a_new_period() -> None:
    before = current_period("monthly", CREATED, utc(2026, 12, 31, 23, 59, 59, 999999))
    after = current_period("monthly", CREATED, utc(2027, 1, 1))
    assert (before.id, after.id) == ("2026-12", "2027-01")
    assert before.end == after.start


def test_other_time_zones_are_converted_to_utc() -> None:
    # 00:30 on March 1st in UTC+1 is still February in UTC.
    now = datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert current_period("monthly", CREATED, now).id == "2026-02"
    assert current_period("daily", CREATED, now).id == "2026-02-28"
    created = datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert current_period("total", created, now).start == utc(2025, 12, 31, 23)


def test_every_period_contains_now_and_ids_are_unique_per_period() -> None:
    moment = utc(2026, 12, 1)
    seen: dict[str, dict[str, datetime]] = {"monthly": {}, "weekly": {}, "daily": {}}
    while moment < utc(2028, 2, 1):
        for kind, ids in seen.items():
            period = current_period(kind, CREATED, moment)
            assert period.end is not None and period.start <= moment < period.end
            assert ids.setdefault(period.id, period.start) == period.start
        moment += timedelta(hours=5)
    assert len(seen["monthly"]) == 14


def test_end_ms_and_bounds() -> None:
    period = current_period("daily", CREATED, utc(2026, 11, 27, 10))
    assert period.end_ms == 1_795_824_000_000
    assert current_period("total", CREATED, utc(2026, 11, 27)).end_ms == 0
    assert period_bounds("daily", CREATED, utc(2026, 11, 27, 10)) == (period.start, period.end)


def test_unknown_period_and_naive_times_are_errors() -> None:
    with pytest.raises(ValueError, match="yearly"):
        current_period("yearly", CREATED, CREATED)
    with pytest.raises(ValueError, match="aware"):
        current_period("daily", CREATED, datetime(2026, 1, 1))
