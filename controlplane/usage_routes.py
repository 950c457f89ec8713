"""The usage and billing routes of API.md §6: GET /v1/usage (JSON or CSV), GET /v1/requests,
GET /v1/billing/statement. Parse and check the query, decide whose usage the caller may see,
call `controlplane.usage_queries`, render cents exactly (`aigw.money`)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import AfterValidator

from aigw.errors import invalid_request
from aigw.money import microcents_to_cents
from controlplane import store, views
from controlplane.auth import CallerDep, ParentDep
from controlplane.clock import iso_z
from controlplane.context import ContextDep
from controlplane.errors import not_found
from controlplane.responses import ExactJSONResponse
from controlplane.schemas import clean_text
from controlplane.usage_queries import (
    RequestRow,
    RequestStatus,
    StatementLine,
    UnknownCursor,
    UsageFilters,
    UsageRow,
    checked_group_by,
    request_log,
    statement,
    usage_rows,
)
from controlplane.usage_schemas import BillingStatement, RequestList, UsageList

router = APIRouter(prefix="/v1")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_TIME_HELP = (
    "A date `YYYY-MM-DD` (UTC) or an ISO 8601 time (UTC unless it has an offset). A date `start`"
    " begins at 00:00 UTC that day; a date `end` includes that whole day. A time is exact:"
    " `start` inclusive, `end` exclusive."
)
_SUMS = ("requests", "input_tokens", "output_tokens")
_AMOUNTS = ("cost_cents", "fee_cents", "total_cents")

_CLEAN = AfterValidator(lambda value: value if value is None else clean_text(value))
SubAccountFilter = Annotated[
    str | None,
    Query(
        max_length=100,
        description="Only this sub-account (a sub-account key is always limited to itself).",
    ),
    _CLEAN,
]
TagFilter = Annotated[
    str | None, Query(max_length=200, description="Only requests carrying this tag."), _CLEAN
]
ModelFilter = Annotated[
    str | None, Query(max_length=200, description="Only this model (`provider/model`)."), _CLEAN
]
StartFilter = Annotated[str | None, Query(max_length=40, description=_TIME_HELP)]
EndFilter = Annotated[str | None, Query(max_length=40, description=_TIME_HELP)]


def _moment(value: str, param: str, *, whole_day_end: bool) -> datetime:
    """A query time as an aware UTC datetime; a date is its midnight (an `end` date the next)."""
    try:
        if _DATE.match(value):
            day = date.fromisoformat(value)
            if whole_day_end:
                day += timedelta(days=1)
            return datetime.combine(day, time(0), tzinfo=UTC)
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid_request(
            f"{param}: not a date (YYYY-MM-DD) or ISO 8601 time: '{value[:40]}'", param=param
        ) from None


async def _filters(
    caller: CallerDep,
    ctx: ContextDep,
    sub_account_id: SubAccountFilter = None,
    tag: TagFilter = None,
    model: ModelFilter = None,
    start: StartFilter = None,
    end: EndFilter = None,
) -> UsageFilters:
    """The filters of `/usage` and `/requests` (a dependency of both): a sub-account key sees
    only itself, another id answers 404."""
    if caller.sub_account is not None:
        if sub_account_id not in (None, caller.sub_account.id):
            raise not_found("sub-account", sub_account_id[:80])
        sub_account_id = caller.sub_account.id
    elif sub_account_id is not None:
        owned = await store.get_sub_account(ctx.pool, sub_account_id, parent_id=caller.parent.id)
        if owned is None:
            raise not_found("sub-account", sub_account_id[:80])
    return UsageFilters(
        parent_id=caller.parent.id,
        sub_account_id=sub_account_id,
        tag=tag,
        model=model,
        start=None if start is None else _moment(start, "start", whole_day_end=False),
        end=None if end is None else _moment(end, "end", whole_day_end=True),
    )


FiltersDep = Annotated[UsageFilters, Depends(_filters)]


def _money(cost_microcents: int, fee_microcents: int) -> dict[str, Any]:
    return {
        "cost_cents": microcents_to_cents(cost_microcents),
        "fee_cents": microcents_to_cents(fee_microcents),
        "total_cents": microcents_to_cents(cost_microcents + fee_microcents),
    }


def _usage_row(row: UsageRow, group_by: tuple[str, ...]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for dimension in group_by:
        value = getattr(row, dimension)
        body[dimension] = value.isoformat() if isinstance(value, date) else value
    body |= {name: getattr(row, name) for name in _SUMS}
    return body | _money(row.cost_microcents, row.fee_microcents)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _csv(rows: list[dict[str, Any]], group_by: tuple[str, ...]) -> Response:
    columns = [*group_by, *_SUMS, *_AMOUNTS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({column: _cell(value) for column, value in row.items()} for row in rows)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": "attachment; filename=usage.csv"},
    )


@router.get(
    "/usage",
    response_model=None,
    responses={200: {"model": UsageList, "content": {"text/csv": {}}}},
    summary="Usage totals, filtered and grouped (a sub-account key sees only its own)",
)
async def get_usage(
    ctx: ContextDep,
    filters: FiltersDep,
    group_by: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Comma list of `day` (UTC), `sub_account_id`, `tag`, `model`. Without"
            " it: one total row. By tag, a request counts once under each of its tags.",
        ),
    ] = None,
    format: Annotated[Literal["json", "csv"], Query(description="`csv`: text/csv")] = "json",
) -> Response:
    dimensions = [part.strip() for part in (group_by or "").split(",") if part.strip()]
    try:
        checked = checked_group_by(dimensions)
    except ValueError as exc:
        raise invalid_request(f"group_by: {exc}", param="group_by") from None
    rows = [_usage_row(row, checked) for row in await usage_rows(ctx.pool, filters, checked)]
    if format == "csv":
        return _csv(rows, checked)
    return ExactJSONResponse(views.listing(rows, False))


def _request(row: RequestRow) -> dict[str, Any]:
    return {
        "id": row.request_id,
        "object": "request",
        "sub_account_id": row.sub_account_id,
        "tags": list(row.tags),
        "model": row.model,
        "provider": row.provider,
        "endpoint": row.endpoint,
        "status": row.status,
        "input_tokens": row.input_tokens,
        "cached_input_tokens": row.cached_input_tokens,
        "output_tokens": row.output_tokens,
        **_money(row.cost_microcents, row.fee_microcents),
        "latency_ms": row.latency_ms,
        "byok": row.byok,
        "stream": row.stream,
        "aborted": row.aborted,
        "started_at": iso_z(row.started_at),
        "finished_at": iso_z(row.finished_at),
    }


@router.get(
    "/requests",
    response_model=None,
    responses={200: {"model": RequestList}},
    summary="The per-request log, newest first (a sub-account key sees only its own)",
)
async def list_requests(
    ctx: ContextDep,
    filters: FiltersDep,
    status: Annotated[
        RequestStatus | None,
        Query(description="`ok` (status below 400) or `failed` (400 and above, or no answer)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None,
        Query(max_length=200, description="The `id` of the previous page's last row."),
        _CLEAN,
    ] = None,
) -> ExactJSONResponse:
    try:
        page = await request_log(ctx.pool, filters, limit=limit, after=after, status=status)
    except UnknownCursor:
        raise invalid_request("after: no request with this id", param="after") from None
    return ExactJSONResponse(views.listing([_request(row) for row in page.rows], page.has_more))


def _month(value: str | None, today: date) -> date:
    if value is None:
        return today.replace(day=1)
    matched = _MONTH.match(value)
    if matched is None or not 1 <= int(matched[2]) <= 12:
        raise invalid_request(f"month: not a month YYYY-MM: '{value[:20]}'", param="month")
    return date(int(matched[1]), int(matched[2]), 1)


def _share(requests: int, cost_microcents: int, fee_microcents: int) -> dict[str, Any]:
    return {"requests": requests} | _money(cost_microcents, fee_microcents)


def _totals(line: StatementLine) -> dict[str, Any]:
    return {
        "requests": line.requests,
        "input_tokens": line.input_tokens,
        "output_tokens": line.output_tokens,
        **_money(line.cost_microcents, line.fee_microcents),
        "byok": _share(line.byok_requests, line.byok_cost_microcents, 0),
        "non_byok": _share(
            line.requests - line.byok_requests,
            line.cost_microcents - line.byok_cost_microcents,
            line.fee_microcents,
        ),
    }


@router.get(
    "/billing/statement",
    response_model=None,
    responses={200: {"model": BillingStatement}},
    summary="What the parent owes for a month, in total and per sub-account",
)
async def get_statement(
    parent: ParentDep,
    ctx: ContextDep,
    month: Annotated[
        str | None,
        Query(max_length=20, description="`YYYY-MM` (UTC calendar month); default: this month."),
    ] = None,
) -> ExactJSONResponse:
    first_day = _month(month, ctx.clock().astimezone(UTC).date())
    result = await statement(ctx.pool, parent.id, first_day)
    lines = [
        {"sub_account_id": line.sub_account_id, "name": line.name, "default_tag": line.default_tag}
        | _totals(line)
        for line in result.lines
    ]
    return ExactJSONResponse(
        {
            "object": "billing_statement",
            "month": first_day.strftime("%Y-%m"),
            "period_start": iso_z(datetime.combine(first_day, time(0), tzinfo=UTC)),
            "period_end": iso_z(datetime.combine(result.period_end, time(0), tzinfo=UTC)),
            **_totals(result.total),
            "sub_accounts": lines,
        }
    )
