"""GET /v1/usage and GET /v1/requests against real PostgreSQL and Redis: usage entries go through
the real ingester (ledger + daily roll-up), then the API answers group-bys, filters, CSV and the
request log exactly as hand-computed below, and never shows one payer another's usage."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from aigw.config import parse_config
from controlplane.accounts import create_parent_account
from controlplane.app import create_app
from controlplane.ingester import Ingester

CONFIG = parse_config("{}")
MINI = "openai/gpt-5.4-mini"
HAIKU = "anthropic/claude-haiku-4.5"


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@dataclass
class Payer:
    id: str | None
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Plane:
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    redis: aioredis.Redis
    parent_id: str
    parent: Payer
    other_parent_id: str
    other_parent: Payer

    async def get(self, path: str, payer: Payer | None = None, **params: Any) -> httpx.Response:
        headers = (payer or self.parent).headers
        return await self.client.get(path, params=params, headers=headers)

    async def ok(self, path: str, payer: Payer | None = None, **params: Any) -> Any:
        response = await self.get(path, payer, **params)
        assert response.status_code == 200, response.text
        return orjson.loads(response.content)

    async def sub_account(self, owner: Payer, name: str, default_tag: str) -> Payer:
        response = await self.client.post(
            "/v1/sub-accounts",
            json={"name": name, "default_tag": default_tag},
            headers=owner.headers,
        )
        assert response.status_code == 201, response.text
        return Payer(response.json()["id"], response.json()["key"])

    async def ingest(self, entries: list[dict[str, Any]]) -> None:
        """Through the stream and the real ingester, as the data plane's settlements arrive."""
        for entry in entries:
            owner = entry["sub_account_id"] or entry["parent_id"]
            await self.redis.xadd(keyspace.owner_usage_stream(owner), {"e": orjson.dumps(entry)})
        ingester = Ingester(self.pool, self.redis, block_ms=10)
        settled = 0
        for _ in range(len(entries) + 10):
            settled += await ingester.run_once()
            if settled == len(entries):
                break
        assert settled == len(entries), "the ingester stopped short"


@pytest.fixture
async def plane(pg_dsn: str, redis_url: str) -> AsyncIterator[Plane]:
    parent_id, parent_key = await create_parent_account(pg_dsn, "acme", redis_url)
    other_id, other_key = await create_parent_account(pg_dsn, "rival", redis_url)
    app = create_app(CONFIG, pg_dsn, redis_url, ingest=False)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    redis = aioredis.Redis.from_url(redis_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Plane(
                client,
                pool,
                redis,
                parent_id,
                Payer(None, parent_key),
                other_id,
                Payer(None, other_key),
            )
    await redis.aclose()
    await pool.close()


def entry(request_id: str, parent_id: str, sub_account_id: str | None, **fields: Any) -> dict:
    """A usage event as the data plane writes it (docs/internals.md)."""
    return {
        "type": "usage",
        "request_id": request_id,
        "parent_id": parent_id,
        "sub_account_id": sub_account_id,
        "tags": [],
        "model": MINI,
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "cost_microcents": 0,
        "fee_microcents": 0,
        "byok": False,
        "stream": False,
        "aborted": False,
        "latency_ms": 500,
        "started_at": fields["finished_at"] - 500,
        "period": "2026-11",
        "crossed": [],
    } | fields


@dataclass
class World:
    a: Payer  # tenant:a
    b: Payer  # tenant:b
    c: Payer  # the other parent's


@pytest.fixture
async def world(plane: Plane) -> World:
    """Six requests over three days (hand-computed sums in the tests):

    r1  A  {feature:chat, tenant:a}  MINI   11-10 10:00  in 100 out 10  cost 0.3125  fee 0.015625
    r2  A  {tenant:a}                HAIKU  11-10 12:00  in 200 out 20  cost 2        fee 0.1
    r3  B  {feature:chat, tenant:b}  MINI   11-11 09:00  in 300 out 30  cost 3        fee 0.15
    r4  B  {tenant:b}                MINI   11-11 18:00  in 400 out 40  cost 4 BYOK   fee 0
    r5  parent's own, no tags        HAIKU  11-12 06:00  in 500 out 50  cost 5        fee 0.25
    r6  the other parent's C {tenant:c} MINI 11-10 11:00 in 1000 out 100 cost 10     fee 0.5
    """
    a = await plane.sub_account(plane.parent, "a", "tenant:a")
    b = await plane.sub_account(plane.parent, "b", "tenant:b")
    c = await plane.sub_account(plane.other_parent, "c", "tenant:c")
    p, q = plane.parent_id, plane.other_parent_id
    await plane.ingest(
        [
            entry("r1", p, a.id, tags=["feature:chat", "tenant:a"], input_tokens=100,
                  output_tokens=10, cost_microcents=312_500, fee_microcents=15_625,
                  finished_at=epoch_ms("2026-11-10T10:00:00")),
            entry("r2", p, a.id, tags=["tenant:a"], model=HAIKU, provider="anthropic",
                  input_tokens=200, output_tokens=20, cost_microcents=2_000_000,
                  fee_microcents=100_000, finished_at=epoch_ms("2026-11-10T12:00:00")),
            entry("r3", p, b.id, tags=["feature:chat", "tenant:b"], input_tokens=300,
                  output_tokens=30, cost_microcents=3_000_000, fee_microcents=150_000,
                  stream=True, finished_at=epoch_ms("2026-11-11T09:00:00")),
            entry("r4", p, b.id, tags=["tenant:b"], input_tokens=400, output_tokens=40,
                  cost_microcents=4_000_000, byok=True,
                  finished_at=epoch_ms("2026-11-11T18:00:00")),
            entry("r5", p, None, model=HAIKU, provider="anthropic", input_tokens=500,
                  output_tokens=50, cost_microcents=5_000_000, fee_microcents=250_000,
                  finished_at=epoch_ms("2026-11-12T06:00:00")),
            entry("r6", q, c.id, tags=["tenant:c"], input_tokens=1000, output_tokens=100,
                  cost_microcents=10_000_000, fee_microcents=500_000,
                  finished_at=epoch_ms("2026-11-10T11:00:00")),
        ]
    )  # fmt: skip
    return World(a, b, c)


def sums(requests: int, tokens_in: int, tokens_out: int, cost: str, fee: str) -> dict[str, Any]:
    return {
        "requests": requests,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_cents": Decimal(cost),
        "fee_cents": Decimal(fee),
        "total_cents": Decimal(cost) + Decimal(fee),
    }


def decoded(response: httpx.Response) -> Any:
    """The JSON body with fractional numbers exact (Decimal), as the API writes them."""
    assert response.status_code == 200, response.text
    return json.loads(response.content, parse_float=Decimal)


async def usage(plane: Plane, payer: Payer | None = None, **params: Any) -> list[dict[str, Any]]:
    body = decoded(await plane.get("/v1/usage", payer, **params))
    assert body["object"] == "list" and body["has_more"] is False
    return list(body["data"])


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


R1 = sums(1, 100, 10, "0.3125", "0.015625")
R2 = sums(1, 200, 20, "2", "0.1")
R3 = sums(1, 300, 30, "3", "0.15")
R4 = sums(1, 400, 40, "4", "0")
R5 = sums(1, 500, 50, "5", "0.25")


def added(*rows: dict[str, Any]) -> dict[str, Any]:
    return {name: sum(row[name] for row in rows) for name in rows[0]}


# Group-bys


async def test_without_group_by_one_total_row_of_the_parents_own_usage(
    plane: Plane, world: World
) -> None:
    assert await usage(plane) == [sums(5, 1500, 150, "14.3125", "0.515625")]
    assert await usage(plane, plane.other_parent) == [sums(1, 1000, 100, "10", "0.5")]


async def test_nothing_matched_is_one_row_of_zeros(plane: Plane, world: World) -> None:
    assert await usage(plane, model="openai/none") == [sums(0, 0, 0, "0", "0")]
    assert await usage(plane, group_by="day", model="openai/none") == []


async def test_group_by_day(plane: Plane, world: World) -> None:
    assert await usage(plane, group_by="day") == [
        {"day": "2026-11-10"} | sums(2, 300, 30, "2.3125", "0.115625"),
        {"day": "2026-11-11"} | sums(2, 700, 70, "7", "0.15"),
        {"day": "2026-11-12"} | R5,
    ]


async def test_group_by_sub_account_puts_the_parents_own_traffic_under_null(
    plane: Plane, world: World
) -> None:
    rows = await usage(plane, group_by="sub_account_id")
    by_id = {row.pop("sub_account_id"): row for row in rows}
    assert by_id == {None: R5, world.a.id: added(R1, R2), world.b.id: added(R3, R4)}
    assert rows[0] == R5  # null first


async def test_group_by_tag_counts_a_request_under_each_of_its_tags(
    plane: Plane, world: World
) -> None:
    assert await usage(plane, group_by="tag") == [
        {"tag": None} | R5,
        {"tag": "feature:chat"} | added(R1, R3),
        {"tag": "tenant:a"} | added(R1, R2),
        {"tag": "tenant:b"} | added(R3, R4),
    ]


async def test_group_by_model_and_day_in_the_order_given(plane: Plane, world: World) -> None:
    assert await usage(plane, group_by="model,day") == [
        {"model": HAIKU, "day": "2026-11-10"} | R2,
        {"model": HAIKU, "day": "2026-11-12"} | R5,
        {"model": MINI, "day": "2026-11-10"} | R1,
        {"model": MINI, "day": "2026-11-11"} | added(R3, R4),
    ]


async def test_group_by_every_dimension(plane: Plane, world: World) -> None:
    rows = await usage(plane, group_by="day, sub_account_id, tag, model")
    keyed = {(r.pop("day"), r.pop("sub_account_id"), r.pop("tag"), r.pop("model")): r for r in rows}
    a, b = world.a.id, world.b.id
    assert keyed == {
        ("2026-11-10", a, "feature:chat", MINI): R1,
        ("2026-11-10", a, "tenant:a", MINI): R1,
        ("2026-11-10", a, "tenant:a", HAIKU): R2,
        ("2026-11-11", b, "feature:chat", MINI): R3,
        ("2026-11-11", b, "tenant:b", MINI): added(R3, R4),
        ("2026-11-12", None, None, HAIKU): R5,
    }


# Filters


async def test_filters_by_tag_model_and_sub_account(plane: Plane, world: World) -> None:
    assert await usage(plane, tag="feature:chat") == [added(R1, R3)]
    assert await usage(plane, model=HAIKU) == [added(R2, R5)]
    assert await usage(plane, sub_account_id=world.b.id) == [added(R3, R4)]
    assert await usage(plane, sub_account_id=world.a.id, model=MINI, tag="tenant:a") == [R1]
    assert await usage(plane, tag="tenant:a", group_by="tag") == [
        {"tag": "feature:chat"} | R1,
        {"tag": "tenant:a"} | added(R1, R2),
    ]


async def test_date_bounds_cover_whole_utc_days_end_included(plane: Plane, world: World) -> None:
    assert await usage(plane, start="2026-11-11") == [added(R3, R4, R5)]
    assert await usage(plane, end="2026-11-11") == [added(R1, R2, R3, R4)]
    assert await usage(plane, start="2026-11-11", end="2026-11-11") == [added(R3, R4)]
    assert await usage(plane, start="2026-11-13") == [sums(0, 0, 0, "0", "0")]


async def test_time_bounds_are_exact_start_inclusive_end_exclusive(
    plane: Plane, world: World
) -> None:
    assert await usage(plane, start="2026-11-11T18:00:00Z") == [added(R4, R5)]
    assert await usage(plane, start="2026-11-11T18:00:01Z") == [R5]
    assert await usage(plane, end="2026-11-11T18:00:00Z") == [added(R1, R2, R3)]
    assert await usage(plane, start="2026-11-10T11:00:00", end="2026-11-11T12:00:00+00:00") == [
        added(R2, R3)
    ]
    assert await usage(plane, start="2026-11-11T08:00:00Z", end="2026-11-11T10:00:00Z") == [R3]
    assert await usage(
        plane, start="2026-11-11T10:00:00+01:00", end="2026-11-12", group_by="day"
    ) == [{"day": "2026-11-11"} | added(R3, R4), {"day": "2026-11-12"} | R5]


async def test_bad_parameters_answer_400_naming_them(plane: Plane, world: World) -> None:
    for params, param in [
        ({"group_by": "day,week"}, "group_by"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-11-31"}, "end"),
        ({"format": "xml"}, "format"),
        ({"tag": "a\x00b"}, "tag"),
        ({"model": "x" * 201}, "model"),
    ]:
        error = error_of(await plane.get("/v1/usage", **params))
        assert (error["code"], error["param"]) == ("invalid_request", param), params
    assert "group_by" in error_of(await plane.get("/v1/usage", group_by="week"))["message"]


# CSV


async def test_csv_has_a_header_and_the_same_rows(plane: Plane, world: World) -> None:
    response = await plane.get("/v1/usage", group_by="sub_account_id", format="csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == "attachment; filename=usage.csv"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "sub_account_id",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost_cents",
        "fee_cents",
        "total_cents",
    ]
    assert rows[1] == ["", "1", "500", "50", "5", "0.25", "5.25"]
    assert sorted(rows[2:]) == sorted(
        [
            [world.a.id, "2", "300", "30", "2.3125", "0.115625", "2.428125"],
            [world.b.id, "2", "700", "70", "7", "0.15", "7.15"],
        ]
    )


# Isolation


async def test_a_sub_account_key_sees_only_its_own_usage(plane: Plane, world: World) -> None:
    assert await usage(plane, world.a) == [added(R1, R2)]
    assert await usage(plane, world.a, group_by="sub_account_id") == [
        {"sub_account_id": world.a.id} | added(R1, R2)
    ]
    assert await usage(plane, world.a, sub_account_id=world.a.id, tag="feature:chat") == [R1]
    for other in (world.b.id, world.c.id, "sa_unknown"):
        error = error_of(await plane.get("/v1/usage", world.a, sub_account_id=other), 404)
        assert error["code"] == "not_found"
    page = decoded(await plane.get("/v1/requests", world.a))
    assert [row["id"] for row in page["data"]] == ["r2", "r1"]


async def test_another_parents_sub_account_answers_404(plane: Plane, world: World) -> None:
    for path in ("/v1/usage", "/v1/requests"):
        error = error_of(await plane.get(path, sub_account_id=world.c.id), 404)
        assert error["code"] == "not_found"
    error = error_of(await plane.get("/v1/requests", after="r6"))
    assert error["param"] == "after"
    other = decoded(await plane.get("/v1/requests", plane.other_parent))
    assert [row["id"] for row in other["data"]] == ["r6"]


async def test_a_key_is_needed(plane: Plane, world: World) -> None:
    response = await plane.client.get("/v1/usage")
    assert error_of(response, 401)["code"] == "invalid_api_key"


# The request log


async def test_request_log_rows_carry_what_each_request_was(plane: Plane, world: World) -> None:
    page = decoded(await plane.get("/v1/requests", limit=1, after="r4"))
    assert page == {
        "object": "list",
        "data": [
            {
                "id": "r3",
                "object": "request",
                "sub_account_id": world.b.id,
                "tags": ["feature:chat", "tenant:b"],
                "model": MINI,
                "provider": "openai",
                "endpoint": "/v1/chat/completions",
                "status": 200,
                "input_tokens": 300,
                "cached_input_tokens": 0,
                "output_tokens": 30,
                "cost_cents": 3,
                "fee_cents": Decimal("0.15"),
                "total_cents": Decimal("3.15"),
                "latency_ms": 500,
                "byok": False,
                "stream": True,
                "aborted": False,
                "started_at": "2026-11-11T08:59:59Z",
                "finished_at": "2026-11-11T09:00:00Z",
            }
        ],
        "has_more": True,
    }
    byok = decoded(await plane.get("/v1/requests", limit=1, after="r5"))["data"][0]
    assert (byok["id"], byok["byok"], byok["fee_cents"]) == ("r4", True, 0)


async def test_request_log_pages_newest_first_with_filters(plane: Plane, world: World) -> None:
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = decoded(await plane.get("/v1/requests", **params))
        seen += [row["id"] for row in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == ["r5", "r4", "r3", "r2", "r1"]

    def ids(page: Any) -> list[str]:
        return [row["id"] for row in page["data"]]

    assert ids(decoded(await plane.get("/v1/requests", tag="feature:chat"))) == ["r3", "r1"]
    assert ids(decoded(await plane.get("/v1/requests", model=HAIKU))) == ["r5", "r2"]
    assert ids(decoded(await plane.get("/v1/requests", sub_account_id=world.a.id))) == ["r2", "r1"]
    assert ids(decoded(await plane.get("/v1/requests", start="2026-11-11", end="2026-11-11"))) == [
        "r4",
        "r3",
    ]


async def test_request_log_pages_through_requests_of_the_same_instant(plane: Plane) -> None:
    moment = epoch_ms("2026-11-20T10:00:00")
    await plane.ingest(
        [entry(f"same-{n}", plane.parent_id, None, finished_at=moment) for n in range(5)]
        + [entry("later", plane.parent_id, None, finished_at=moment + 1)]
    )
    seen: list[str] = []
    after = None
    for _ in range(3):
        params = {"limit": 2} | ({"after": after} if after else {})
        page = decoded(await plane.get("/v1/requests", **params))
        seen += [row["id"] for row in page["data"]]
        after = page["data"][-1]["id"]
    assert page["has_more"] is False
    assert seen[0] == "later"
    assert sorted(seen[1:]) == [f"same-{n}" for n in range(5)]


async def test_request_log_limits_are_checked(plane: Plane) -> None:
    for limit in (0, 101):
        assert error_of(await plane.get("/v1/requests", limit=limit))["param"] == "limit"
    assert error_of(await plane.get("/v1/requests", after="nope"))["param"] == "after"


async def test_request_log_filters_ok_and_failed_requests(plane: Plane, world: World) -> None:
    await plane.ingest(
        [
            entry("r7", plane.parent_id, world.a.id, status=502,
                  finished_at=epoch_ms("2026-11-12T07:00:00")),
            entry("r8", plane.parent_id, world.a.id, status=0, aborted=True,
                  finished_at=epoch_ms("2026-11-12T08:00:00")),
        ]
    )  # fmt: skip

    def ids(**params: Any) -> Any:
        return plane.get("/v1/requests", **params)

    failed = decoded(await ids(status="failed"))
    assert [row["id"] for row in failed["data"]] == ["r8", "r7"]
    ok = decoded(await ids(status="ok", sub_account_id=world.a.id))
    assert [row["id"] for row in ok["data"]] == ["r2", "r1"]
    assert error_of(await ids(status="broken"))["param"] == "status"
