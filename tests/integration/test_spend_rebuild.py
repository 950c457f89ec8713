"""Spend rebuilt in Redis from the ledger when an owner is not ready there: after FLUSHDB (through
`project_all` and the watcher), for monthly, daily and total periods; a request counted exactly
once whether it is in the ledger, still in the stream, or both; budget flags kept; a ready owner
and a new sub-account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from aigw.config import parse_config
from aigw.periods import current_period
from controlplane.accounts import create_parent_account
from controlplane.app import create_app
from controlplane.ingester import Ingester
from controlplane.projector import Projector
from extproc.limits import LimitStore, SettleRequest

CONFIG = parse_config("tiers: {}\n")
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@dataclass
class Plane:
    app: Any
    client: httpx.AsyncClient
    redis: aioredis.Redis
    parent_id: str
    parent_key: str

    @property
    def pool(self) -> asyncpg.Pool:
        return self.app.state.context.pool

    @property
    def projector(self) -> Projector:
        return self.app.state.context.projector

    @property
    def limits(self) -> LimitStore:
        return self.projector.limits

    def ingester(self, **kwargs: Any) -> Ingester:
        return Ingester(self.pool, self.redis, block_ms=10, **kwargs)

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key or self.parent_key}"}
        response = await self.client.request(method, path, headers=headers, **kw)
        assert response.status_code in (200, 201), response.text
        return response

    async def create(self, **fields: Any) -> dict[str, Any]:
        response = await self.call("POST", "/v1/sub-accounts", json={"name": "c", **fields})
        return dict(response.json())

    async def spend(self, sub_account_id: str) -> dict[str, Any]:
        response = await self.call("GET", f"/v1/sub-accounts/{sub_account_id}")
        return dict(response.json()["spend"])

    async def spent(self, sub_account_id: str, period_id: str) -> int:
        spent, _reserved = await self.limits.read_spend(sub_account_id, period_id)
        return spent

    async def ready(self, sub_account_id: str) -> bool:
        return await self.redis.hget(keyspace.owner_state(sub_account_id), "ready") == b"1"

    async def add(self, body: dict[str, Any]) -> None:
        """Into the stream of the entry's owner, as extproc appends it."""
        owner = body.get("sub_account_id") or body["parent_id"]
        await self.redis.xadd(keyspace.owner_usage_stream(owner), {"e": orjson.dumps(body)})

    async def ledger_ids(self) -> list[str]:
        rows = await self.pool.fetch("SELECT request_id FROM usage_ledger ORDER BY request_id")
        return [row["request_id"] for row in rows]

    async def settle(self, sub: dict[str, Any], request_id: str, cost: int, fee: int) -> None:
        """What extproc does when a response ends: count it in Redis, append its entry."""
        period = current_period(sub["budget_period"], NOW, NOW)
        cap = sub["spend_cap_cents"]
        await self.limits.settle(
            SettleRequest(
                owner_id=sub["id"],
                request_id=request_id,
                now_ms=NOW_MS,
                period_id=period.id,
                period_end_ms=period.end_ms,
                cap_microcents=None if cap is None else cap * 1_000_000,
                cost_microcents=cost + fee,
                actual_tokens=1300,
                tpm_input_tokens=0,
                tpm=None,
                event=orjson.dumps(
                    usage(sub["id"], self.parent_id, request_id, period.id, cost, fee)
                ),
                parent_id=self.parent_id,
            )
        )


def usage(
    sub_account_id: str | None,
    parent_id: str,
    request_id: str,
    period: str,
    cost: int,
    fee: int,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "type": "usage",
        "request_id": request_id,
        "parent_id": parent_id,
        "sub_account_id": sub_account_id,
        "tags": [],
        "model": "openai/gpt-5.4-mini",
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "input_tokens": 1000,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 300,
        "cost_microcents": cost,
        "fee_microcents": fee,
        "byok": False,
        "stream": False,
        "aborted": False,
        "latency_ms": 100,
        "started_at": NOW_MS - 100,
        "finished_at": NOW_MS,
        "period": period,
    } | fields


async def start_plane(pg_dsn: str, redis_url: str, ingest: bool = False) -> AsyncIterator[Plane]:
    parent_id, key = await create_parent_account(pg_dsn, "acme", redis_url)
    app = create_app(
        CONFIG, pg_dsn, redis_url, clock=lambda: NOW, reproject_interval=0.05, ingest=ingest
    )
    redis = aioredis.Redis.from_url(redis_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Plane(app, client, redis, parent_id, key)
    await redis.aclose()


@pytest.fixture
async def plane(pg_dsn: str, redis_url: str) -> AsyncIterator[Plane]:
    async for running in start_plane(pg_dsn, redis_url):
        yield running


async def eventually(check: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize(
    ("budget_period", "current", "earlier"),
    [
        ("monthly", "2026-11", "2026-10"),
        ("daily", "2026-11-27", "2026-11-26"),
        ("total", "total", "2026-11"),
    ],
)
async def test_spend_is_rebuilt_from_the_ledger_after_a_flush(
    plane: Plane, budget_period: str, current: str, earlier: str
) -> None:
    sub = await plane.create(spend_cap_cents=5000, budget_period=budget_period)
    other = await plane.create(spend_cap_cents=5000)
    sa, parent = sub["id"], plane.parent_id
    await plane.add(usage(sa, parent, "req-1", current, 312_500, 15_625))
    await plane.add(usage(sa, parent, "req-2", current, 1_000_000, 50_000))
    await plane.add(usage(sa, parent, "req-0", earlier, 9_000_000, 0))  # another period
    await plane.add(usage(other["id"], parent, "req-3", "2026-11", 7_000_000, 0))
    await plane.add(usage(None, parent, "req-4", current, 5_000_000, 0))  # the parent's own
    await plane.ingester().run_once()
    assert len(await plane.ledger_ids()) == 5

    await plane.redis.flushdb()
    assert not await plane.ready(sa)
    await plane.projector.project_all()

    assert await plane.ready(sa) and await plane.ready(other["id"])
    assert await plane.spent(sa, current) == 1_378_125
    assert await plane.spent(other["id"], "2026-11") == 7_000_000
    response = await plane.call("GET", f"/v1/sub-accounts/{sa}")
    assert response.json()["spend"]["spent_cents"] == 1.378125
    assert b'"spent_cents":1.378125,"remaining_cents":4998.621875}' in response.content


async def test_the_watcher_rebuilds_after_a_flush_by_itself(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=100)
    await plane.add(usage(sub["id"], plane.parent_id, "req-1", "2026-11", 4_000_000, 200_000))
    await plane.ingester().run_once()
    await plane.redis.flushdb()
    await eventually(lambda: plane.ready(sub["id"]))
    assert await plane.spent(sub["id"], "2026-11") == 4_200_000
    assert (await plane.spend(sub["id"]))["spent_cents"] == 4.2


async def test_requests_settled_after_the_flush_are_counted_once(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=5000)
    sa = sub["id"]
    await plane.settle(sub, "req-before", 1_000_000, 50_000)
    await plane.ingester().run_once()
    assert await plane.ledger_ids() == ["req-before"]

    await plane.redis.flushdb()
    # in-flight requests end after the flush: they count in a fresh counter and a fresh stream
    await plane.settle(sub, "req-after-1", 2_000_000, 100_000)
    await plane.settle(sub, "req-after-2", 3_000_000, 150_000)
    await plane.projector.project_all()
    assert await plane.spent(sa, "2026-11") == 6_300_000  # ledger 1.05 + stream 2.1 + 3.15

    # then they are ingested: the ledger has them, Redis does not count them again
    ingester = plane.ingester()
    while await ingester.run_once():
        pass
    assert await plane.ledger_ids() == ["req-after-1", "req-after-2", "req-before"]
    assert await plane.spent(sa, "2026-11") == 6_300_000
    # a request settled after the rebuild counts once more, as usual
    await plane.settle(sub, "req-later", 1_000_000, 0)
    assert await plane.spent(sa, "2026-11") == 7_300_000
    await ingester.run_once()
    assert await plane.pool.fetchval(
        "SELECT sum(cost_microcents + fee_microcents) FROM usage_ledger"
    ) == await plane.spent(sa, "2026-11")


async def test_an_entry_both_committed_and_still_in_the_stream_counts_once(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await plane.create(spend_cap_cents=5000)
    sa = sub["id"]
    await plane.settle(sub, "req-1", 2_000_000, 100_000)
    ingester = plane.ingester()

    async def lost_ack(stream_ids: list[str]) -> None:
        raise ConnectionError("Redis went away after the commit")

    monkeypatch.setattr(ingester, "_ack", lost_ack)
    with pytest.raises(ConnectionError):
        await ingester.run_once()
    assert await plane.ledger_ids() == ["req-1"]
    assert await plane.redis.xlen(keyspace.owner_usage_stream(sa)) == 1

    await plane.redis.delete(keyspace.owner_state(sa))  # the owner is not ready any more
    await plane.redis.hset(keyspace.owner_spend(sa, "2026-11"), "spent", "0")
    await plane.projector.project_all()
    assert await plane.spent(sa, "2026-11") == 2_100_000


async def test_budget_events_already_fired_are_not_fired_again(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=10)
    sa = sub["id"]
    await plane.add(usage(sa, plane.parent_id, "req-1", "2026-11", 8_500_000, 0, crossed=[80]))
    await plane.ingester().run_once()
    await plane.redis.flushdb()
    # a 100 % crossing that is still in the stream counts as fired too
    await plane.add(
        {
            "type": "budget",
            "sub_account_id": sa,
            "parent_id": plane.parent_id,
            "threshold": 100,
            "spent_microcents": 10_000_000,
            "cap_microcents": 10_000_000,
            "period": "2026-11",
            "at": NOW_MS,
        }
    )
    await plane.projector.project_all()
    flags = await plane.redis.hmget(keyspace.owner_spend(sa, "2026-11"), ["warned", "exhausted"])
    assert flags == [b"1", b"1"]


async def test_a_budget_event_of_another_period_is_not_a_flag(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=10)
    sa = sub["id"]
    await plane.add(usage(sa, plane.parent_id, "req-1", "2026-10", 8_500_000, 0, crossed=[80]))
    await plane.ingester().run_once()
    await plane.redis.flushdb()
    await plane.projector.project_all()
    flags = await plane.redis.hmget(keyspace.owner_spend(sa, "2026-11"), ["warned", "exhausted"])
    assert flags == [None, None]
    assert await plane.spent(sa, "2026-11") == 0


async def test_a_ready_owner_is_left_alone(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=5000)
    await plane.add(usage(sub["id"], plane.parent_id, "req-1", "2026-11", 1_000_000, 0))
    await plane.ingester().run_once()
    # Redis is ahead of the ledger (settled, not yet ingested): a rebuild must not undo that
    await plane.redis.hset(keyspace.owner_spend(sub["id"], "2026-11"), "spent", "3000000")
    assert await plane.projector.spend.rebuild_all() == 0
    assert await plane.spent(sub["id"], "2026-11") == 3_000_000


async def test_a_new_sub_account_is_ready_with_nothing_spent(plane: Plane) -> None:
    sub = await plane.create(spend_cap_cents=5000, budget_period="weekly")
    assert await plane.ready(sub["id"])
    assert await plane.redis.hget(keyspace.owner_spend(sub["id"], "2026-W48"), "spent") == b"0"
    assert sub["spend"] == {
        "period_start": "2026-11-23T00:00:00Z",
        "resets_at": "2026-11-30T00:00:00Z",
        "spent_cents": 0,
        "remaining_cents": 5000,
    }


async def test_the_control_plane_runs_the_ingester(pg_dsn: str, redis_url: str) -> None:
    async for running in start_plane(pg_dsn, redis_url, ingest=True):
        sub = await running.create()
        await running.add(usage(sub["id"], running.parent_id, "req-1", "2026-11", 1, 0))

        async def stored(plane: Plane = running) -> bool:
            return await plane.ledger_ids() == ["req-1"]

        await eventually(stored)
