"""GET /v1/billing/statement against real PostgreSQL and Redis: a month of BYOK and platform-key
requests (through the real ingester) gives the parent's bill with the fee on the platform share
only, and the same per sub-account so a platform can rebill its customers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.integration.test_usage_api import (
    HAIKU,
    Payer,
    Plane,
    decoded,
    entry,
    epoch_ms,
    error_of,
    plane,
)

__all__ = ["plane"]  # the fixture


def share(requests: int, cost: str, fee: str) -> dict[str, Any]:
    return {
        "requests": requests,
        "cost_cents": Decimal(cost),
        "fee_cents": Decimal(fee),
        "total_cents": Decimal(cost) + Decimal(fee),
    }


async def seed_november(plane: Plane) -> tuple[Payer, Payer]:
    """In November: A makes one platform-key and one BYOK request, B one platform-key request,
    the parent one of its own; October, December and the other parent's usage stay out."""
    a = await plane.sub_account(plane.parent, "customer_a", "tenant:a")
    b = await plane.sub_account(plane.parent, "customer_b", "tenant:b")
    c = await plane.sub_account(plane.other_parent, "customer_c", "tenant:c")
    p = plane.parent_id
    await plane.ingest(
        [
            entry("a-platform", p, a.id, input_tokens=100, output_tokens=10,
                  cost_microcents=1_000_000, fee_microcents=50_000,
                  finished_at=epoch_ms("2026-11-01T00:00:00")),
            entry("a-byok", p, a.id, input_tokens=200, output_tokens=20, byok=True,
                  cost_microcents=2_000_000, fee_microcents=0,
                  finished_at=epoch_ms("2026-11-15T12:00:00")),
            entry("b-platform", p, b.id, model=HAIKU, provider="anthropic", input_tokens=300,
                  output_tokens=30, cost_microcents=333_333, fee_microcents=16_667,
                  finished_at=epoch_ms("2026-11-30T23:59:59")),
            entry("own", p, None, input_tokens=5, output_tokens=1, cost_microcents=101,
                  fee_microcents=6, finished_at=epoch_ms("2026-11-20T08:00:00")),
            entry("a-october", p, a.id, cost_microcents=7_000_000, fee_microcents=350_000,
                  period="2026-10", finished_at=epoch_ms("2026-10-31T23:59:59")),
            entry("a-december", p, a.id, cost_microcents=9_000_000, fee_microcents=450_000,
                  period="2026-12", finished_at=epoch_ms("2026-12-01T00:00:00")),
            entry("c-rival", plane.other_parent_id, c.id, cost_microcents=5_000_000,
                  fee_microcents=250_000, finished_at=epoch_ms("2026-11-10T00:00:00")),
        ]
    )  # fmt: skip
    return a, b


async def test_statement_splits_byok_from_the_platform_share_with_its_fee(plane: Plane) -> None:
    a, b = await seed_november(plane)
    statement = decoded(await plane.get("/v1/billing/statement", month="2026-11"))
    lines = statement.pop("sub_accounts")
    assert statement == {
        "object": "billing_statement",
        "month": "2026-11",
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "requests": 4,
        "input_tokens": 605,
        "output_tokens": 61,
        "cost_cents": Decimal("3.333434"),
        "fee_cents": Decimal("0.066673"),
        "total_cents": Decimal("3.400107"),
        "byok": share(1, "2", "0"),
        "non_byok": share(3, "1.333434", "0.066673"),
    }
    assert lines == [
        {
            "sub_account_id": None,
            "name": None,
            "default_tag": None,
            "requests": 1,
            "input_tokens": 5,
            "output_tokens": 1,
            **share(1, "0.000101", "0.000006"),
            "byok": share(0, "0", "0"),
            "non_byok": share(1, "0.000101", "0.000006"),
        },
        *sorted(
            [
                {
                    "sub_account_id": a.id,
                    "name": "customer_a",
                    "default_tag": "tenant:a",
                    "requests": 2,
                    "input_tokens": 300,
                    "output_tokens": 30,
                    **share(2, "3", "0.05"),
                    "byok": share(1, "2", "0"),
                    "non_byok": share(1, "1", "0.05"),
                },
                {
                    "sub_account_id": b.id,
                    "name": "customer_b",
                    "default_tag": "tenant:b",
                    "requests": 1,
                    "input_tokens": 300,
                    "output_tokens": 30,
                    **share(1, "0.333333", "0.016667"),
                    "byok": share(0, "0", "0"),
                    "non_byok": share(1, "0.333333", "0.016667"),
                },
            ],
            key=lambda line: str(line["sub_account_id"]),
        ),
    ]


async def test_other_months_and_other_parents_stay_out(plane: Plane) -> None:
    await seed_november(plane)
    october = decoded(await plane.get("/v1/billing/statement", month="2026-10"))
    assert (october["requests"], october["total_cents"]) == (1, Decimal("7.35"))
    december = decoded(await plane.get("/v1/billing/statement", month="2026-12"))
    assert (december["requests"], december["total_cents"]) == (1, Decimal("9.45"))
    empty = decoded(await plane.get("/v1/billing/statement", month="2025-11"))
    assert (empty["requests"], empty["total_cents"], empty["sub_accounts"]) == (0, 0, [])
    rival = decoded(await plane.get("/v1/billing/statement", plane.other_parent, month="2026-11"))
    assert (rival["requests"], rival["total_cents"]) == (1, Decimal("5.25"))


async def test_a_bad_month_is_a_400_and_a_sub_account_key_is_refused(plane: Plane) -> None:
    a, _ = await seed_november(plane)
    for month in ("2026-13", "2026-1", "november", "2026-11-01"):
        error = error_of(await plane.get("/v1/billing/statement", month=month))
        assert (error["code"], error["param"]) == ("invalid_request", "month"), month
    error = error_of(await plane.get("/v1/billing/statement", a, month="2026-11"), 401)
    assert error["code"] == "invalid_api_key"
