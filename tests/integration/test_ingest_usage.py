"""The usage ingester against real Redis and PostgreSQL: stream entries in the documented format
(docs/internals.md) become ledger rows, an exact daily roll-up and outbox events, each exactly
once, whatever is re-delivered, malformed, or interrupted."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from controlplane.ingester import Ingester
from tests.faults import RedisServer, proxied_dsn, proxy_for

T0 = 1_795_773_600_000  # 2026-11-27T10:00:00Z in epoch ms
STREAM = keyspace.owner_usage_stream("sa_a")  # the shard of the sub-account of these tests


@dataclass
class Setup:
    pool: asyncpg.Pool
    redis: aioredis.Redis
    parent_id: str
    sub_id: str

    def ingester(self, **kwargs: Any) -> Ingester:
        kwargs.setdefault("block_ms", 10)
        return Ingester(self.pool, self.redis, **kwargs)

    async def add(self, body: dict[str, Any] | bytes, field: str = "e") -> str:
        value = body if isinstance(body, bytes) else orjson.dumps(body)
        stream_id = await self.redis.xadd(STREAM, {field: value})
        return str(stream_id.decode())

    async def ledger(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT * FROM usage_ledger ORDER BY finished_at")
        return [dict(row) for row in rows]

    async def daily(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT * FROM usage_daily ORDER BY sub_account_id NULLS FIRST, model, tags"
        )
        return [dict(row) for row in rows]

    async def events(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT type, parent_id, sub_account_id, dedupe_key, payload::text AS payload,"
            " created_at, id FROM events ORDER BY created_at, dedupe_key"
        )
        return [dict(row) | {"payload": orjson.loads(row["payload"])} for row in rows]

    async def pending(self) -> int:
        info = await self.redis.xpending(STREAM, keyspace.USAGE_CONSUMER_GROUP)
        return int(info["pending"])


@pytest.fixture
async def setup(pg_dsn: str, redis_url: str) -> AsyncIterator[Setup]:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    redis = aioredis.Redis.from_url(redis_url)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    await pool.execute(
        "INSERT INTO parent_accounts (id, name, created_at) VALUES ('acct_p', 'acme', $1)", now
    )
    await pool.execute(
        "INSERT INTO sub_accounts (id, parent_id, name, spend_cap_cents, default_tag,"
        " created_at, updated_at) VALUES ('sa_a', 'acct_p', 'customer_42', 5000, 'tenant:42',"
        " $1, $1)",
        now,
    )
    yield Setup(pool, redis, "acct_p", "sa_a")
    await redis.aclose()
    await pool.close()


def usage(request_id: str, **fields: Any) -> dict[str, Any]:
    """A usage event exactly as docs/internals.md lists its fields."""
    return {
        "type": "usage",
        "request_id": request_id,
        "parent_id": "acct_p",
        "sub_account_id": "sa_a",
        "tags": ["tenant:42"],
        "model": "openai/gpt-5.4-mini",
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "input_tokens": 1000,
        "cached_input_tokens": 200,
        "cache_write_tokens": 0,
        "output_tokens": 300,
        "cost_microcents": 312_500,
        "fee_microcents": 15_625,
        "byok": False,
        "stream": True,
        "aborted": False,
        "latency_ms": 850,
        "started_at": T0 - 850,
        "finished_at": T0,
        "period": "2026-11",
        "crossed": [],
    } | fields


async def test_entries_become_ledger_rows_and_an_exact_roll_up(setup: Setup) -> None:
    await setup.add(usage("req-1", tags=["b", "a"]))
    await setup.add(usage("req-2", tags=["a", "b", "a"], finished_at=T0 + 1, output_tokens=1))
    await setup.add(usage("req-3", tags=[], finished_at=T0 + 2, byok=True, fee_microcents=0))
    await setup.add(
        usage(
            "req-4",
            sub_account_id=None,
            tags={},  # cjson's empty list
            model="anthropic/claude-haiku-4.5",
            provider="anthropic",
            status=429,
            finished_at=T0 + 86_400_000,
            cost_microcents=0,
            fee_microcents=0,
        )
    )
    ingester = setup.ingester()
    assert await ingester.run_once() == 4
    assert await ingester.run_once() == 0

    rows = await setup.ledger()
    assert [row["request_id"] for row in rows] == ["req-1", "req-2", "req-3", "req-4"]
    first = rows[0]
    ingested_at = first.pop("ingested_at")
    assert isinstance(ingested_at, datetime)
    assert first == {
        "request_id": "req-1",
        "parent_id": "acct_p",
        "sub_account_id": "sa_a",
        "tags": ["b", "a"],
        "model": "openai/gpt-5.4-mini",
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "input_tokens": 1000,
        "cached_input_tokens": 200,
        "cache_write_tokens": 0,
        "output_tokens": 300,
        "cost_microcents": 312_500,
        "fee_microcents": 15_625,
        "byok": False,
        "stream": True,
        "aborted": False,
        "latency_ms": 850,
        "started_at": datetime(2026, 11, 27, 9, 59, 59, 150_000, tzinfo=UTC),
        "finished_at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        "period": "2026-11",
    }
    assert rows[1]["tags"] == ["a", "b"]  # distinct, in order
    assert rows[3]["sub_account_id"] is None and rows[3]["tags"] == []

    base = {
        "parent_id": "acct_p",
        "cache_write_tokens": 0,
        "input_tokens": 1000,
        "cached_input_tokens": 200,
        "failed_requests": 0,
    }
    assert await setup.daily() == [
        base
        | {
            "day": date(2026, 11, 28),
            "sub_account_id": None,
            "model": "anthropic/claude-haiku-4.5",
            "tags": [],
            "requests": 1,
            "failed_requests": 1,
            "output_tokens": 300,
            "cost_microcents": 0,
            "fee_microcents": 0,
            "byok_requests": 0,
            "byok_cost_microcents": 0,
        },
        base
        | {
            "day": date(2026, 11, 27),
            "sub_account_id": "sa_a",
            "model": "openai/gpt-5.4-mini",
            "tags": [],
            "requests": 1,
            "output_tokens": 300,
            "cost_microcents": 312_500,
            "fee_microcents": 0,
            "byok_requests": 1,
            "byok_cost_microcents": 312_500,
        },
        # one row for the tag set {a, b}, whatever the order the request listed them in
        base
        | {
            "day": date(2026, 11, 27),
            "sub_account_id": "sa_a",
            "model": "openai/gpt-5.4-mini",
            "tags": ["a", "b"],
            "requests": 2,
            "input_tokens": 2000,
            "cached_input_tokens": 400,
            "output_tokens": 301,
            "cost_microcents": 625_000,
            "fee_microcents": 31_250,
            "byok_requests": 0,
            "byok_cost_microcents": 0,
        },
    ]
    # the stream stays bounded: acknowledged entries are deleted
    assert await setup.redis.xlen(STREAM) == 0
    assert await setup.pending() == 0
    assert ingester.stats.inserted == 4


async def test_the_roll_up_answers_per_tag_and_in_total_without_double_counting(
    setup: Setup,
) -> None:
    await setup.add(usage("req-1", tags=["a", "b"]))
    await setup.add(usage("req-2", tags=["a"]))
    await setup.add(usage("req-3", tags=[]))
    await setup.ingester().run_once()
    total = await setup.pool.fetchval("SELECT sum(requests) FROM usage_daily")
    per_tag = await setup.pool.fetch(
        "SELECT tag, sum(requests) AS requests FROM usage_daily CROSS JOIN LATERAL"
        " unnest(CASE WHEN tags = '{}' THEN '{NULL}'::text[] ELSE tags END) tag"
        " GROUP BY tag ORDER BY tag NULLS LAST"
    )
    assert total == 3
    assert [(row["tag"], row["requests"]) for row in per_tag] == [("a", 2), ("b", 1), (None, 1)]
    tagged_a = await setup.pool.fetchval(
        "SELECT sum(requests) FROM usage_daily WHERE tags @> ARRAY['a']"
    )
    assert tagged_a == 2


async def test_a_request_delivered_twice_is_stored_and_rolled_up_once(setup: Setup) -> None:
    await setup.add(usage("req-1"))
    await setup.add(usage("req-1"))  # the same request in the same batch
    ingester = setup.ingester()
    await ingester.run_once()
    await setup.add(usage("req-1"))  # and again in a later batch
    await ingester.run_once()
    assert len(await setup.ledger()) == 1
    daily = await setup.daily()
    assert [(row["requests"], row["cost_microcents"]) for row in daily] == [(1, 312_500)]
    assert ingester.stats.duplicates == 2
    assert await setup.redis.xlen(STREAM) == 0


async def test_a_batch_committed_but_not_acked_is_redelivered_without_effect(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup.add(usage("req-1", crossed=[80]))
    await setup.add(usage("req-2", status=502, cost_microcents=0, fee_microcents=0))
    ingester = setup.ingester()

    async def lost_ack(stream_ids: list[str]) -> None:
        raise ConnectionError("Redis went away after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(ingester, "_ack", lost_ack)
        with pytest.raises(ConnectionError):
            await ingester.run_once()
    assert await setup.pending() == 2
    assert await ingester.run_once() == 2  # its own pending entries come first
    assert await setup.pending() == 0
    assert len(await setup.ledger()) == 2
    assert [row["requests"] for row in await setup.daily()] == [2]
    assert [event["type"] for event in await setup.events()] == [
        "sub_account.budget.warning",
        "sub_account.request.failed",
    ]


async def test_budget_rate_limited_and_failed_events_are_stored_exactly_once(
    setup: Setup,
) -> None:
    ingester = setup.ingester()
    await setup.add(usage("req-1", crossed=[80]))
    await setup.add(usage("req-2", crossed=[80, 100], finished_at=T0 + 1000))
    # admission's own 100% for a request that settle never crossed: the same fact
    await setup.add(
        {
            "type": "budget",
            "sub_account_id": "sa_a",
            "parent_id": None,
            "threshold": 100,
            "spent_microcents": "4999000000",
            "cap_microcents": 5_000_000_000,
            "period": "2026-11",
            "at": T0 + 2000,
        }
    )
    rate_limited = {"type": "rate_limited", "sub_account_id": "sa_a", "parent_id": "acct_p"}
    await setup.add(rate_limited | {"limit": "rpm", "at": T0 + 3000})
    await setup.add(rate_limited | {"limit": "rpm", "at": T0 + 3000})  # re-sent
    await setup.add(rate_limited | {"limit": "tpm", "at": T0 + 63_000})  # the next minute
    await setup.add(usage("req-3", status=503, finished_at=T0 + 4000, cost_microcents=0))
    await setup.add(usage("req-4", aborted=True, abort_reason="provider_timeout"))
    await setup.add(usage("req-5", aborted=True))  # the client went away: not a failure
    await setup.add(usage("req-6", sub_account_id=None, status=500))  # a parent's own
    await ingester.run_once()
    # a later budget entry of the same period changes nothing; another period fires again
    await setup.add(usage("req-7", crossed=[80, 100], finished_at=T0 + 5000))
    await setup.add(usage("req-8", crossed=[80], period="2026-12", finished_at=T0 + 6000))
    await ingester.run_once()

    events = await setup.events()
    assert [(event["type"], event["dedupe_key"]) for event in events] == [
        ("sub_account.budget.warning", "budget:80:sa_a:2026-11"),
        ("sub_account.request.failed", "request.failed:req-4"),
        ("sub_account.budget.exhausted", "budget:100:sa_a:2026-11"),
        ("sub_account.rate_limited", f"rate_limited:sa_a:{(T0 + 3000) // 60_000}"),
        ("sub_account.request.failed", "request.failed:req-3"),
        ("sub_account.budget.warning", "budget:80:sa_a:2026-12"),
        ("sub_account.rate_limited", f"rate_limited:sa_a:{(T0 + 63_000) // 60_000}"),
    ]
    assert all(event["id"].startswith("evt_") for event in events)
    assert {event["parent_id"] for event in events} == {"acct_p"}
    by_key = {event["dedupe_key"]: event for event in events}
    assert by_key["budget:80:sa_a:2026-11"]["payload"] == {
        "sub_account_id": "sa_a",
        "name": "customer_42",
        "default_tag": "tenant:42",
        "threshold": 80,
        "period": "2026-11",
        "request_id": "req-1",
        "spend_cap_cents": 5000,
    }
    assert by_key["budget:80:sa_a:2026-11"]["created_at"] == datetime(
        2026, 11, 27, 10, 0, tzinfo=UTC
    )
    failed = by_key["request.failed:req-3"]["payload"]
    assert failed["status"] == 503 and failed["request_id"] == "req-3"
    assert failed["name"] == "customer_42"
    assert by_key["request.failed:req-4"]["payload"]["abort_reason"] == "provider_timeout"
    limited = by_key[f"rate_limited:sa_a:{(T0 + 3000) // 60_000}"]["payload"]
    assert limited == {
        "sub_account_id": "sa_a",
        "name": "customer_42",
        "default_tag": "tenant:42",
        "limit": "rpm",
    }
    assert ingester.stats.events == 7


async def test_a_budget_entry_keeps_its_amounts_as_exact_cents(setup: Setup) -> None:
    await setup.add(
        {
            "type": "budget",
            "sub_account_id": "sa_a",
            "parent_id": "acct_p",
            "threshold": 100,
            "spent_microcents": 4_999_999_999,
            "cap_microcents": 5_000_000_000,
            "period": "2026-11",
            "at": T0,
        }
    )
    await setup.ingester().run_once()
    raw = await setup.pool.fetchval("SELECT payload->>'spent_cents' FROM events")
    assert Decimal(raw) == Decimal("4999.999999")
    assert await setup.pool.fetchval("SELECT payload->'spend_cap_cents' FROM events") == "5000"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("e", b"{not json", "field 'e' is not JSON"),
        ("e", b"[1, 2]", "field 'e' is not a JSON object"),
        ("x", b"{}", "no field 'e'"),
        ("e", orjson.dumps({"type": "mystery"}), "unknown type 'mystery'"),
        ("e", orjson.dumps({"type": "usage"}), "'request_id' is missing or not a string"),
        ("e", orjson.dumps(usage("r", cost_microcents=-5)), "'cost_microcents' is not"),
        ("e", orjson.dumps(usage("r", status="ok")), "'status' is not"),
        ("e", orjson.dumps(usage("r", finished_at=None)), "'finished_at' is not a time"),
        ("e", orjson.dumps(usage("r", byok="yes")), "'byok' is not a boolean"),
        ("e", orjson.dumps(usage("r", model="a\x00b")), "'model' is not storable text"),
        ("e", orjson.dumps(usage("r", tags="a,b")), "'tags' is not a list"),
        ("e", orjson.dumps(usage("r", crossed=[90])), "'crossed' holds a threshold"),
        ("e", b'{"type": "rate_limited", "sub_account_id": "sa_a", "limit": "rps", "at": 1}', ""),
    ],
)
async def test_a_malformed_entry_is_acked_kept_and_does_not_block_the_next(
    setup: Setup, field: str, value: bytes, reason: str
) -> None:
    bad_id = await setup.add(value, field=field)
    await setup.add(usage("req-good"))
    ingester = setup.ingester()
    assert await ingester.run_once() == 2
    assert [row["request_id"] for row in await setup.ledger()] == ["req-good"]
    dead = await setup.pool.fetch("SELECT stream_id, reason, raw FROM usage_dead_letters")
    assert len(dead) == 1
    assert dead[0]["stream_id"] == f"{STREAM}:{bad_id}"
    assert dead[0]["reason"].startswith(reason)
    assert dead[0]["raw"].startswith(f"{field}=")
    assert ingester.stats.malformed == 1
    assert await setup.redis.xlen(STREAM) == 0
    assert await setup.pending() == 0


async def test_an_entry_postgresql_refuses_is_dead_lettered_and_the_rest_is_stored(
    setup: Setup,
) -> None:
    # a tag set too large for the roll-up's unique index: PostgreSQL refuses the batch
    huge_tags = [secrets.token_hex(500) for _ in range(40)]
    await setup.add(usage("req-1"))
    await setup.add(usage("req-huge", tags=huge_tags))
    await setup.add(usage("req-2"))
    ingester = setup.ingester()
    assert await ingester.run_once() == 3
    assert [row["request_id"] for row in await setup.ledger()] == ["req-1", "req-2"]
    assert [row["requests"] for row in await setup.daily()] == [2]
    reasons = await setup.pool.fetch("SELECT reason FROM usage_dead_letters")
    assert [row["reason"] for row in reasons] == ["refused by PostgreSQL (54000)"]
    assert await setup.pending() == 0


async def test_a_deleted_pending_entry_is_acked(setup: Setup) -> None:
    ingester = setup.ingester(consumer="c1")
    await ingester.run_once()  # creates the group
    stream_id = await setup.add(usage("req-1"))
    await setup.redis.xreadgroup(
        keyspace.USAGE_CONSUMER_GROUP, "c1", {STREAM: ">"}, count=10
    )  # delivered, then lost
    await setup.redis.xdel(STREAM, stream_id)
    restarted = setup.ingester(consumer="c1")
    assert await restarted.run_once() == 1
    assert restarted.stats.trimmed == 1
    assert await setup.pending() == 0


async def test_postgresql_down_keeps_entries_pending_until_it_is_back(
    setup: Setup, pg_dsn: str
) -> None:
    if not urlsplit(pg_dsn).hostname:
        pytest.skip("needs PostgreSQL over TCP to put a proxy in between ($DATABASE_URL)")
    proxy = proxy_for(pg_dsn)
    proxy.start()
    proxied = proxied_dsn(pg_dsn, proxy)
    pool = await asyncpg.create_pool(proxied, min_size=1, max_size=2)
    ingester = Ingester(pool, setup.redis, block_ms=10)
    try:
        await setup.add(usage("req-1"))
        assert await ingester.run_once() == 1
        proxy.stop()
        await setup.add(usage("req-2", crossed=[80]))
        await setup.add(usage("req-3"))
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await ingester.run_once()
        assert await setup.pending() == 2  # read, not acknowledged, not lost
        assert await setup.redis.xlen(STREAM) == 2

        worker = asyncio.create_task(ingester.run())
        await asyncio.sleep(0.5)  # retrying against a PostgreSQL that is down
        assert len(await setup.ledger()) == 1
        proxy.start()  # back, on the same port
        for _ in range(100):
            if len(await setup.ledger()) == 3 and await setup.pending() == 0:
                break
            await asyncio.sleep(0.05)
        ingester.stop()
        await asyncio.wait_for(worker, 5)
    finally:
        proxy.close()
        pool.terminate()
    assert [row["request_id"] for row in await setup.ledger()] == ["req-1", "req-2", "req-3"]
    assert [row["requests"] for row in await setup.daily()] == [3]
    assert [event["type"] for event in await setup.events()] == ["sub_account.budget.warning"]
    assert await setup.redis.xlen(STREAM) == 0


async def test_entries_of_a_consumer_that_died_are_claimed_by_another(setup: Setup) -> None:
    survivor = setup.ingester(consumer="alive", claim_idle_ms=100)
    await survivor.run_once()  # creates the group
    for number in range(3):
        await setup.add(usage(f"req-{number}"))
    # a control plane read them and died before storing them
    await setup.redis.xreadgroup(keyspace.USAGE_CONSUMER_GROUP, "dead", {STREAM: ">"}, count=10)
    assert await survivor.run_once() == 0  # not idle long enough yet
    await asyncio.sleep(0.15)
    survivor = setup.ingester(consumer="alive", claim_idle_ms=100)
    assert await survivor.run_once() == 3
    assert survivor.stats.claimed == 3
    assert len(await setup.ledger()) == 3
    assert await setup.pending() == 0


async def test_consumers_of_stopped_control_planes_are_forgotten(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingester = setup.ingester(consumer="alive", claim_idle_ms=0)
    await ingester.run_once()
    await setup.add(usage("req-1"))
    await setup.redis.xreadgroup(keyspace.USAGE_CONSUMER_GROUP, "gone", {STREAM: ">"}, count=1)
    monkeypatch.setattr("controlplane.usage_consumer.FORGET_CONSUMER_IDLE_MS", -1)
    await ingester.run_once()  # claims req-1 from "gone": "gone" still pending then
    await ingester.run_once()  # the next scan finds "gone" with nothing pending
    consumers = await setup.redis.xinfo_consumers(STREAM, keyspace.USAGE_CONSUMER_GROUP)
    assert [consumer["name"] for consumer in consumers] == [b"alive"]
    assert len(await setup.ledger()) == 1


async def test_a_flushed_redis_gets_its_consumer_group_back(setup: Setup) -> None:
    ingester = setup.ingester()
    await setup.add(usage("req-1"))
    assert await ingester.run_once() == 1
    await setup.redis.flushdb()
    await setup.add(usage("req-2"))
    for _ in range(3):
        await ingester.run_once()
    assert [row["request_id"] for row in await setup.ledger()] == ["req-1", "req-2"]
    assert await setup.redis.xlen(STREAM) == 0


async def test_a_round_reads_every_shard_with_one_command(setup: Setup, tmp_path: Path) -> None:
    """On a single server the 64 usage streams are read with one XREADGROUP, not one each."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        parent_stream = keyspace.owner_usage_stream("acct_p")  # the parent's own traffic
        assert parent_stream != STREAM
        await client.xadd(STREAM, {"e": orjson.dumps(usage("req-1"))})
        await client.xadd(parent_stream, {"e": orjson.dumps(usage("req-2", sub_account_id=None))})
        ingester = Ingester(setup.pool, client, block_ms=10)
        await client.config_resetstat()

        assert await ingester.run_once() == 2

        stats = await client.info("commandstats")
        assert stats["cmdstat_xreadgroup"]["calls"] == 2  # own pending ("0"), then new (">")
        assert {row["request_id"] for row in await setup.ledger()} == {"req-1", "req-2"}
    finally:
        await client.aclose()
        server.stop()


async def test_stop_ends_run_between_batches(setup: Setup) -> None:
    ingester = setup.ingester()
    worker = asyncio.create_task(ingester.run())
    await setup.add(usage("req-1"))
    for _ in range(100):
        if await setup.ledger():
            break
        await asyncio.sleep(0.02)
    ingester.stop()
    await asyncio.wait_for(worker, 2)
    assert len(await setup.ledger()) == 1
