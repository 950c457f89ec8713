"""What each dashboard page shows, gathered for its template. Read-only.

Numbers come from the same places as the JSON API: live spend from `controlplane.spend` (Redis,
or the ledger while Redis cannot tell), usage and statements from `controlplane.usage_queries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aigw.periods import current_period
from controlplane import store
from controlplane.context import Context
from controlplane.dashboard.filters import LogQuery, month_choice, month_options, month_range
from controlplane.dashboard.formatting import BudgetBar, budget_bar, dollars_exact, permille
from controlplane.models import ParentAccount, SubAccount
from controlplane.spend import spent_microcents
from controlplane.usage_queries import (
    StatementLine,
    UsageFilters,
    UsageRow,
    request_log,
    statement,
    usage_rows,
)

LIST_PAGE = 100
MAX_SUB_ACCOUNTS = 2000
OVERVIEW_BUDGETS = 12
TOP_CUSTOMERS = 10
LATEST_REQUESTS = 15
LOG_PAGE = 50


@dataclass(frozen=True, slots=True)
class Budget:
    """A sub-account with its live spend against its cap in the current budget period."""

    sub: SubAccount
    bar: BudgetBar
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Customer:
    """A line of the month's statement, with its share of the month's total."""

    line: StatementLine
    share_permille: int


async def all_sub_accounts(ctx: Context, parent_id: str) -> list[SubAccount]:
    """The parent's sub-accounts in creation order (the first `MAX_SUB_ACCOUNTS`)."""
    subs: list[SubAccount] = []
    position = None
    while len(subs) < MAX_SUB_ACCOUNTS:
        page, has_more = await store.list_sub_accounts(
            ctx.pool, parent_id, limit=LIST_PAGE, after=position
        )
        subs += page
        if not has_more or not page:
            break
        position = (page[-1].created_at, page[-1].id)
    return subs


async def budget_of(ctx: Context, sub: SubAccount, now: datetime) -> Budget:
    period = current_period(sub.budget_period, sub.created_at, now)
    spent = await spent_microcents(ctx.redis, sub.id, period, ctx.pool, ctx.projector.limits)
    return Budget(sub, budget_bar(spent, sub.spend_cap_cents), period.end)


def chart(labels: list[str], amounts: list[int]) -> dict[str, Any]:
    """A chart's data: labels and exact dollar amounts (JSON numbers, never floats here)."""
    values: list[Decimal] = [dollars_exact(amount) for amount in amounts]
    return {"labels": labels, "values": values}


def by_model_chart(rows: list[UsageRow]) -> dict[str, Any]:
    ranked = sorted(rows, key=lambda row: row.total_microcents, reverse=True)
    return chart([row.model or "" for row in ranked], [row.total_microcents for row in ranked])


def by_day_chart(rows: list[UsageRow], first: date, last: date) -> dict[str, Any]:
    """Every day from `first` to `last` (inclusive), zero where nothing was spent."""
    spent = {row.day: row.total_microcents for row in rows if row.day is not None}
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    return chart([day.strftime("%b %-d") for day in days], [spent.get(day, 0) for day in days])


async def overview(ctx: Context, parent: ParentAccount, month_text: str | None) -> dict[str, Any]:
    now = ctx.clock()
    months = month_options(parent.created_at, now)
    month = month_choice(month_text, months)
    start, end = month_range(month)
    usage = UsageFilters(parent.id, start=start, end=end)
    bill = await statement(ctx.pool, parent.id, month)
    by_model = await usage_rows(ctx.pool, usage, ["model"])
    by_day = await usage_rows(ctx.pool, usage, ["day"])
    last_day = min(now.date(), (end - timedelta(days=1)).date())
    subs = [sub for sub in await all_sub_accounts(ctx, parent.id) if sub.status == "active"]
    budgets = [await budget_of(ctx, sub, now) for sub in subs]
    budgets.sort(key=lambda budget: (budget.bar.spent_microcents, budget.sub.name), reverse=True)
    total = bill.total.total_microcents
    customers = sorted(bill.lines, key=lambda line: line.total_microcents, reverse=True)
    return {
        "month": month,
        "months": months,
        "is_current_month": month == months[0],
        "bill": bill.total,
        "byok_permille": permille(bill.total.byok_cost_microcents, bill.total.cost_microcents),
        "budgets": budgets[:OVERVIEW_BUDGETS],
        "budgets_hidden": max(len(budgets) - OVERVIEW_BUDGETS, 0),
        "model_chart": by_model_chart(by_model),
        "day_chart": by_day_chart(by_day, month, last_day),
        "customers": [
            Customer(line, permille(line.total_microcents, total))
            for line in customers[:TOP_CUSTOMERS]
        ],
    }


async def sub_account_list(ctx: Context, parent: ParentAccount) -> dict[str, Any]:
    now = ctx.clock()
    subs = await all_sub_accounts(ctx, parent.id)
    return {"budgets": [await budget_of(ctx, sub, now) for sub in subs]}


async def sub_account_page(
    ctx: Context, parent: ParentAccount, sub_account_id: str
) -> dict[str, Any] | None:
    sub = await store.get_sub_account(ctx.pool, sub_account_id, parent_id=parent.id)
    if sub is None:
        return None
    now = ctx.clock()
    month = now.date().replace(day=1)
    start, end = month_range(month)
    usage = UsageFilters(parent.id, sub_account_id=sub.id, start=start, end=end)
    by_model = await usage_rows(ctx.pool, usage, ["model"])
    by_day = await usage_rows(ctx.pool, usage, ["day"])
    month_total = await usage_rows(ctx.pool, usage, [])
    latest = await request_log(
        ctx.pool, UsageFilters(parent.id, sub_account_id=sub.id), limit=LATEST_REQUESTS, after=None
    )
    return {
        "budget": await budget_of(ctx, sub, now),
        "month": month,
        "month_total": month_total[0],
        "model_rows": sorted(by_model, key=lambda row: row.total_microcents, reverse=True),
        "model_chart": by_model_chart(by_model),
        "day_chart": by_day_chart(by_day, month, now.date()),
        "requests": latest.rows,
        "more_requests": latest.has_more,
        "names": {sub.id: sub.name},
    }


async def request_log_page(ctx: Context, parent: ParentAccount, query: LogQuery) -> dict[str, Any]:
    """Raises `usage_queries.UnknownCursor` for a cursor this parent cannot see."""
    subs = await all_sub_accounts(ctx, parent.id)
    models = await usage_rows(ctx.pool, UsageFilters(parent.id), ["model"])
    screen = await request_log(
        ctx.pool,
        query.usage_filters(parent.id),
        limit=LOG_PAGE,
        after=query.after,
        status=query.status,
    )
    older = screen.rows[-1].request_id if screen.has_more and screen.rows else None
    return {
        "query": query,
        "sub_accounts": subs,
        "models": sorted(row.model for row in models if row.model),
        "names": {sub.id: sub.name for sub in subs},
        "requests": screen.rows,
        "older": query.params(after=older) if older else None,
    }
