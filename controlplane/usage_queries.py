"""Read-only queries over the metering tables: usage totals, the per-request log, the monthly
billing statement. Pure functions over an asyncpg pool (no HTTP); the API routes
(`controlplane.usage_routes`) and the dashboard both call them.

Usage is answered exactly and cheaply: whole UTC days come from the daily roll-up
`usage_daily`, a partial first or last day from the `usage_ledger` rows of that part of the day
(see `_split`). Grouping by tag unnests each request's tag set, so a request tagged {a, b} counts
under `a` and under `b`, and an untagged one under tag None (controlplane/migrations/002_usage.sql).
Amounts are integer micro-cents (`aigw.money`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import asyncpg

GROUP_DIMENSIONS = ("day", "sub_account_id", "tag", "model")

_LEDGER_COLUMNS = (
    "request_id, sub_account_id, tags, model, provider, endpoint, status, input_tokens,"
    " cached_input_tokens, output_tokens, cost_microcents, fee_microcents, byok, stream, aborted,"
    " latency_ms, started_at, finished_at"
)
_SUMS = ("requests", "input_tokens", "output_tokens", "cost_microcents", "fee_microcents")
_TAG_OF_ROW = "unnest(CASE WHEN f.tags = '{}' THEN '{NULL}'::text[] ELSE f.tags END)"


RequestStatus = Literal["ok", "failed"]
"""A request failed when its status is 400 or more, or 0 (no answer): the rule of the daily
roll-up's `failed_requests`."""
_STATUS_CONDITIONS: dict[str, str] = {
    "ok": "status BETWEEN 1 AND 399",
    "failed": "(status = 0 OR status >= 400)",
}


class UnknownCursor(LookupError):
    """`after` names no request of this parent (and sub-account filter)."""


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """What to count. `start` is inclusive, `end` exclusive (aware datetimes; None: unbounded).
    `sub_account_id`, `tag` and `model` are exact matches; a tag matches a request carrying it."""

    parent_id: str
    sub_account_id: str | None = None
    tag: str | None = None
    model: str | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group: its dimension values (None where not grouped, or for a parent's own traffic /
    untagged requests where grouped) and the sums of its requests."""

    day: date | None
    sub_account_id: str | None
    tag: str | None
    model: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_microcents: int
    fee_microcents: int

    @property
    def total_microcents(self) -> int:
        return self.cost_microcents + self.fee_microcents


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One ledger row: a request that reached a provider."""

    request_id: str
    sub_account_id: str | None
    tags: tuple[str, ...]
    model: str
    provider: str
    endpoint: str
    status: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_microcents: int
    fee_microcents: int
    byok: bool
    stream: bool
    aborted: bool
    latency_ms: int | None
    started_at: datetime | None
    finished_at: datetime

    @property
    def total_microcents(self) -> int:
        return self.cost_microcents + self.fee_microcents


@dataclass(frozen=True, slots=True)
class RequestPage:
    """Newest first; `has_more` when rows follow the last one (pass its id as `after`)."""

    rows: list[RequestRow]
    has_more: bool


@dataclass(frozen=True, slots=True)
class StatementLine:
    """What one payer of a month cost: a sub-account, or (sub_account_id None) the parent's own
    traffic. BYOK requests carry no fee: `fee_microcents` is all on the non-BYOK share."""

    sub_account_id: str | None
    name: str | None
    default_tag: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_microcents: int
    fee_microcents: int
    byok_requests: int
    byok_cost_microcents: int

    @property
    def total_microcents(self) -> int:
        return self.cost_microcents + self.fee_microcents


@dataclass(frozen=True, slots=True)
class Statement:
    """A parent's month (`month` is its first day; UTC days of `finished_at`): the sum of its
    lines in `total` (sub_account_id None there) and one line per payer with usage."""

    parent_id: str
    month: date
    total: StatementLine
    lines: list[StatementLine]

    @property
    def period_end(self) -> date:
        return next_month(self.month)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a time range is read from: the roll-up for the whole days [first_day, end_day)
    (None: unbounded) when `whole_days`, the ledger for each partial-day range of `parts`."""

    whole_days: bool
    first_day: date | None
    end_day: date | None
    parts: list[tuple[datetime, datetime]]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _split(start: datetime | None, end: datetime | None) -> _Span:
    """[start, end) as whole UTC days [first_day, end_day) for the roll-up and the partial-day
    time ranges left for the ledger."""
    if start is not None and end is not None and start >= end:
        return _Span(whole_days=False, first_day=None, end_day=None, parts=[])
    first_day = None
    parts = []
    if start is not None:
        first_day = start.astimezone(UTC).date()
        if start > _midnight(first_day):
            first_day += timedelta(days=1)
            parts.append((start, _midnight(first_day)))
    end_day = None
    if end is not None:
        end_day = end.astimezone(UTC).date()
        if end > _midnight(end_day):
            parts.append((_midnight(end_day), end))
    if first_day is not None and end_day is not None and first_day >= end_day:
        assert start is not None and end is not None
        return _Span(whole_days=False, first_day=None, end_day=None, parts=[(start, end)])
    return _Span(whole_days=True, first_day=first_day, end_day=end_day, parts=parts)


class _Args:
    """Positional query arguments, numbered as they are added."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _owner_conditions(filters: UsageFilters, arg: _Args) -> list[str]:
    conditions = [f"parent_id = {arg(filters.parent_id)}"]
    if filters.sub_account_id is not None:
        conditions.append(f"sub_account_id = {arg(filters.sub_account_id)}")
    if filters.model is not None:
        conditions.append(f"model = {arg(filters.model)}")
    if filters.tag is not None:
        conditions.append(f"tags @> ARRAY[{arg(filters.tag)}::text]")
    return conditions


def _usage_sources(filters: UsageFilters, arg: _Args) -> list[str]:
    """SELECTs of (day, sub_account_id, model, tags, sums...) whose union is the usage asked."""
    span = _split(filters.start, filters.end)
    sums = ", ".join(_SUMS)
    sources = []
    if span.whole_days:
        conditions = _owner_conditions(filters, arg)
        if span.first_day is not None:
            conditions.append(f"day >= {arg(span.first_day)}")
        if span.end_day is not None:
            conditions.append(f"day < {arg(span.end_day)}")
        sources.append(
            f"SELECT day, sub_account_id, model, tags, {sums}"
            f" FROM usage_daily WHERE {' AND '.join(conditions)}"
        )
    for part_start, part_end in span.parts:
        conditions = _owner_conditions(filters, arg)
        conditions.append(f"finished_at >= {arg(part_start)} AND finished_at < {arg(part_end)}")
        sources.append(
            "SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, sub_account_id, model, tags,"
            " 1 AS requests, input_tokens, output_tokens, cost_microcents, fee_microcents"
            f" FROM usage_ledger WHERE {' AND '.join(conditions)}"
        )
    return sources


def checked_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    """The dimensions in the order given, each once; ValueError names an unknown one."""
    seen: list[str] = []
    for dimension in group_by:
        if dimension not in GROUP_DIMENSIONS:
            raise ValueError(
                f"unknown group_by value '{dimension}': use {', '.join(GROUP_DIMENSIONS)}"
            )
        if dimension not in seen:
            seen.append(dimension)
    return tuple(seen)


async def usage_rows(
    pool: asyncpg.Pool, filters: UsageFilters, group_by: Sequence[str]
) -> list[UsageRow]:
    """Sums of the requests `filters` selects, one row per combination of the `group_by`
    dimensions that has usage (ordered by those dimensions, None first), or exactly one total
    row (zeros when nothing matched) without `group_by`. ValueError for an unknown dimension."""
    dimensions = checked_group_by(group_by)
    arg = _Args()
    sources = _usage_sources(filters, arg)
    if not sources:
        return [] if dimensions else [UsageRow(None, None, None, None, 0, 0, 0, 0, 0)]
    columns = {d: "t.tag" if d == "tag" else f"f.{d}" for d in dimensions}
    selected = [
        f"{columns[d]} AS {d}" if d in columns else f"NULL AS {d}" for d in GROUP_DIMENSIONS
    ]
    totals = [f"coalesce(sum(f.{s}), 0)::bigint AS {s}" for s in _SUMS]
    unnest = f" CROSS JOIN LATERAL {_TAG_OF_ROW} AS t(tag)" if "tag" in columns else ""
    query = (
        f"SELECT {', '.join(selected + totals)} FROM ({' UNION ALL '.join(sources)}) AS f{unnest}"
    )
    if columns:
        grouped = ", ".join(columns.values())
        ordered = ", ".join(f"{column} NULLS FIRST" for column in columns.values())
        query += f" GROUP BY {grouped} ORDER BY {ordered}"
    records = await pool.fetch(query, *arg.values)
    return [UsageRow(**dict(record)) for record in records]


def _request_row(record: asyncpg.Record) -> RequestRow:
    fields = dict(record)
    fields["tags"] = tuple(fields["tags"])
    return RequestRow(**fields)


async def request_log(
    pool: asyncpg.Pool,
    filters: UsageFilters,
    *,
    limit: int,
    after: str | None,
    status: RequestStatus | None = None,
) -> RequestPage:
    """Up to `limit` ledger rows `filters` (and `status`: only ok or only failed requests)
    select (time filters on `finished_at`), newest first (ties by request id); `after` is the id
    of the last row of the previous page. UnknownCursor when `after` is not a request these
    filters' owner can see."""
    arg = _Args()
    conditions = _owner_conditions(filters, arg)
    if status is not None:
        conditions.append(_STATUS_CONDITIONS[status])
    if filters.start is not None:
        conditions.append(f"finished_at >= {arg(filters.start)}")
    if filters.end is not None:
        conditions.append(f"finished_at < {arg(filters.end)}")
    if after is not None:
        owner = UsageFilters(filters.parent_id, filters.sub_account_id)
        owner_args = _Args()
        owner_conditions = _owner_conditions(owner, owner_args)
        finished_at = await pool.fetchval(
            f"SELECT finished_at FROM usage_ledger WHERE {' AND '.join(owner_conditions)}"
            f" AND request_id = {owner_args(after)}",
            *owner_args.values,
        )
        if finished_at is None:
            raise UnknownCursor(after)
        # The index order is (finished_at DESC, request_id ASC): the first condition bounds
        # the index scan, the second only looks at rows of the cursor's own instant.
        at, request_id = arg(finished_at), arg(after)
        conditions.append(
            f"finished_at <= {at} AND (finished_at < {at} OR request_id > {request_id})"
        )
    records = await pool.fetch(
        f"SELECT {_LEDGER_COLUMNS} FROM usage_ledger WHERE {' AND '.join(conditions)}"
        f" ORDER BY finished_at DESC, request_id LIMIT {arg(limit + 1)}",
        *arg.values,
    )
    rows = [_request_row(record) for record in records[:limit]]
    return RequestPage(rows=rows, has_more=len(records) > limit)


_STATEMENT_QUERY = """
SELECT t.sub_account_id, s.name, s.default_tag, t.requests, t.input_tokens, t.output_tokens,
       t.cost_microcents, t.fee_microcents, t.byok_requests, t.byok_cost_microcents
FROM (
    SELECT sub_account_id,
           sum(requests)::bigint AS requests,
           sum(input_tokens)::bigint AS input_tokens,
           sum(output_tokens)::bigint AS output_tokens,
           sum(cost_microcents)::bigint AS cost_microcents,
           sum(fee_microcents)::bigint AS fee_microcents,
           sum(byok_requests)::bigint AS byok_requests,
           sum(byok_cost_microcents)::bigint AS byok_cost_microcents
    FROM usage_daily
    WHERE parent_id = $1 AND day >= $2 AND day < $3
    GROUP BY sub_account_id
) AS t
LEFT JOIN sub_accounts s ON s.id = t.sub_account_id
ORDER BY t.sub_account_id NULLS FIRST
"""


async def statement(pool: asyncpg.Pool, parent_id: str, month: date) -> Statement:
    """What `parent_id` owes for the calendar month starting `month` (a first day, UTC): the
    total and one line per sub-account with usage, the parent's own traffic first."""
    month = month.replace(day=1)
    records = await pool.fetch(_STATEMENT_QUERY, parent_id, month, next_month(month))
    lines = [StatementLine(**dict(record)) for record in records]
    sums = {
        name: sum(getattr(line, name) for line in lines)
        for name in (
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_microcents",
            "fee_microcents",
            "byok_requests",
            "byok_cost_microcents",
        )
    }
    total = StatementLine(sub_account_id=None, name=None, default_tag=None, **sums)
    return Statement(parent_id=parent_id, month=month, total=total, lines=lines)
