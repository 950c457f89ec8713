"""Spend caps on a real Redis: reserve, clamp, refuse, sweep, settle, crossings, concurrency.

Amounts are small on purpose: input 1,000 micro-cents, output 1,000 nano-cents (1 micro-cent)
per token, so a request of 1,000 output tokens reserves 2,000 micro-cents at worst.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from extproc.limits import (
    AdmitRequest,
    LimitStore,
    LimitStoreUnavailable,
    SettleRequest,
)

T0 = 1_795_000_000_000
PERIOD = "2026-11"
PERIOD_END = 1_796_083_200_000
OWNER = "sa_budget"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis: aioredis.Redis) -> LimitStore:
    return LimitStore(redis)


def ask(request_id: str = "req_1", **changes: object) -> AdmitRequest:
    request = AdmitRequest(
        owner_id=OWNER,
        request_id=request_id,
        now_ms=T0,
        period_id=PERIOD,
        period_end_ms=PERIOD_END,
        cap_microcents=1_000_000,
        input_microcents=1_000,
        output_nanocents_per_token=1_000,
        max_output_tokens=1_000,
        min_output_tokens=16,
        reservation_ttl_ms=60_000,
        parent_id="acct_budget",
    )
    return replace(request, **changes)  # type: ignore[arg-type]


def done(request_id: str = "req_1", cost: int = 0, **changes: object) -> SettleRequest:
    request = SettleRequest(
        owner_id=OWNER,
        request_id=request_id,
        now_ms=T0 + 1_000,
        period_id=PERIOD,
        period_end_ms=PERIOD_END,
        cap_microcents=1_000_000,
        cost_microcents=cost,
        actual_tokens=0,
        tpm_input_tokens=0,
        tpm=None,
        event=orjson.dumps({"type": "usage", "request_id": request_id, "period": PERIOD}),
        admitted_ms=T0,
        parent_id="acct_budget",
    )
    return replace(request, **changes)  # type: ignore[arg-type]


async def events(redis: aioredis.Redis, kind: str | None = None) -> list[dict[str, object]]:
    entries = await redis.xrange(keyspace.owner_usage_stream(OWNER))
    decoded = [orjson.loads(fields[b"e"]) for _, fields in entries]
    return [event for event in decoded if kind is None or event["type"] == kind]


async def test_reserve_then_settle(store: LimitStore, redis: aioredis.Redis) -> None:
    result = await store.admit(ask())
    assert (result.admitted, result.refusal, result.clamped) == (True, None, False)
    assert result.granted_output_tokens == 1_000
    assert (result.reserved_microcents, result.reserved_total_microcents) == (2_000, 2_000)
    assert await store.read_spend(OWNER, PERIOD) == (0, 2_000)
    second = await store.admit(ask("req_2"))
    assert second.reserved_total_microcents == 4_000

    settled = await store.settle(done(cost=1_234))
    assert (settled.settled, settled.spent_microcents, settled.crossed) == (True, 1_234, ())
    assert settled.reserved_total_microcents == 2_000
    assert await store.read_spend(OWNER, PERIOD) == (1_234, 2_000)
    usage = await events(redis, "usage")
    assert usage == [{"type": "usage", "request_id": "req_1", "period": PERIOD, "crossed": []}]
    ttl = await redis.pttl(keyspace.owner_spend(OWNER, PERIOD))
    assert ttl > PERIOD_END - T0  # period end + 35 days, counted from the injected clock


async def test_clamps_output_to_exactly_what_remains(store: LimitStore) -> None:
    # 7,000 spent of 10,000: 3,000 remain; the worst case (1,000 + 1,000 x 2.345) does not fit.
    await store.settle(done("earlier", cost=7_000, cap_microcents=10_000))
    result = await store.admit(ask(cap_microcents=10_000, output_nanocents_per_token=2_345))
    assert (result.admitted, result.clamped) == (True, True)
    # floor((3,000 - 1,000) x 1,000 / 2,345) = 852; 853 tokens would cost 1,000 + 2,001.
    assert result.granted_output_tokens == 852
    assert result.reserved_microcents == 1_000 + 1_998
    assert result.spent_microcents + result.reserved_total_microcents <= 10_000


async def test_clamp_keeps_exact_integers_for_large_caps(store: LimitStore) -> None:
    # $200,000 cap: remaining x 1,000 is above 2^53, the script must still floor exactly.
    cap = 20_000_000_000_000
    spent = cap - 7_777_777_777
    await store.settle(done("earlier", cost=spent, cap_microcents=cap))
    price = 999_999_937
    request = ask(cap_microcents=cap, output_nanocents_per_token=price, max_output_tokens=10**6)
    result = await store.admit(request)
    remaining = cap - spent - 1_000
    granted = remaining * 1_000 // price
    assert (result.clamped, result.granted_output_tokens) == (True, granted)
    assert result.reserved_microcents == 1_000 - (-granted * price // 1_000)
    assert result.reserved_microcents <= cap - spent


async def test_refuses_when_not_even_the_minimum_fits(
    store: LimitStore, redis: aioredis.Redis
) -> None:
    # 1,000 input + 16 tokens = 1,016 > the 1,010 that remain.
    await store.settle(done("earlier", cost=8_990, cap_microcents=10_000))
    result = await store.admit(ask(cap_microcents=10_000, rpm=5))
    assert (result.admitted, result.refusal, result.reserved_microcents) == (False, "budget", 0)
    assert result.spent_microcents == 8_990
    assert result.rate["requests"][1] == 5  # the refused request was not counted
    assert await store.read_spend(OWNER, PERIOD) == (8_990, 0)
    assert await redis.exists(keyspace.owner_reservations(OWNER, PERIOD)) == 0
    # exactly the minimum fits: granted 16 tokens
    assert (await store.admit(ask(cap_microcents=10_006))).granted_output_tokens == 16


async def test_embeddings_have_no_output_to_clamp(store: LimitStore) -> None:
    await store.settle(done("earlier", cost=9_500, cap_microcents=10_000))
    embed = ask(cap_microcents=10_000, output_nanocents_per_token=0, min_output_tokens=0)
    assert (await store.admit(replace(embed, input_microcents=400))).reserved_microcents == 400
    assert (await store.admit(replace(embed, request_id="big"))).refusal == "budget"


async def test_expired_reservations_are_swept(store: LimitStore) -> None:
    holder = await store.admit(ask("holder", cap_microcents=3_000, reservation_ttl_ms=1_000))
    assert holder.reserved_microcents == 2_000
    blocked = await store.admit(ask("next", cap_microcents=3_000, now_ms=T0 + 999))
    assert blocked.refusal == "budget"
    later = await store.admit(ask("next", cap_microcents=3_000, now_ms=T0 + 1_000))
    assert (later.admitted, later.reserved_total_microcents) == (True, 2_000)


async def test_settle_after_expiry_does_not_release_twice(store: LimitStore) -> None:
    await store.admit(ask("slow", cap_microcents=5_000, reservation_ttl_ms=1_000))
    fresh = await store.admit(ask("fresh", cap_microcents=5_000, now_ms=T0 + 2_000))
    assert fresh.reserved_total_microcents == 2_000  # "slow" was swept
    settled = await store.settle(done("slow", cost=1_500, now_ms=T0 + 3_000))
    assert (settled.spent_microcents, settled.reserved_total_microcents) == (1_500, 2_000)
    assert await store.read_spend(OWNER, PERIOD) == (1_500, 2_000)


async def test_double_settle_changes_nothing(store: LimitStore, redis: aioredis.Redis) -> None:
    await store.admit(ask())
    first = await store.settle(done(cost=700))
    again = await store.settle(done(cost=700))
    assert (first.settled, again.settled) == (True, False)
    assert (again.spent_microcents, again.reserved_total_microcents) == (700, 0)
    assert len(await events(redis, "usage")) == 1


async def test_release_drops_the_reservation_only_once(store: LimitStore) -> None:
    await store.admit(ask())
    await store.admit(ask("other"))
    assert await store.release(OWNER, "req_1", PERIOD) is True
    assert await store.release(OWNER, "req_1", PERIOD) is False
    assert await store.read_spend(OWNER, PERIOD) == (0, 2_000)


async def test_same_request_admitted_twice_holds_one_reservation(store: LimitStore) -> None:
    await store.admit(ask())
    again = await store.admit(ask(max_output_tokens=500))
    assert (again.reserved_microcents, again.reserved_total_microcents) == (1_500, 1_500)


async def test_crossings_fire_once_per_period(store: LimitStore, redis: aioredis.Redis) -> None:
    cap = 10_000
    crossed = []
    for index, cost in enumerate((7_000, 1_000, 500, 1_500, 0)):
        result = await store.settle(done(f"r{index}", cost=cost, cap_microcents=cap))
        crossed.append(result.crossed)
    assert crossed == [(), (80,), (), (100,), ()]
    assert [event["crossed"] for event in await events(redis, "usage")] == [
        [],
        [80],
        [],
        [100],
        [],
    ]
    budget = await events(redis, "budget")
    assert [(event["threshold"], event["spent_microcents"]) for event in budget] == [
        (80, 8_000),
        (100, 10_000),
    ]
    assert budget[0] == {
        "type": "budget",
        "sub_account_id": OWNER,
        "parent_id": "acct_budget",
        "threshold": 80,
        "spent_microcents": 8_000,
        "cap_microcents": cap,
        "period": PERIOD,
        "at": T0 + 1_000,
    }
    # a new period starts fresh; one settle may cross both thresholds
    december = await store.settle(done("dec", cost=10_000, cap_microcents=cap, period_id="2026-12"))
    assert (december.spent_microcents, december.crossed) == (10_000, (80, 100))
    assert len(await events(redis, "budget")) == 4


async def test_a_402_emits_the_exhausted_event_settle_never_did(
    store: LimitStore, redis: aioredis.Redis
) -> None:
    await store.settle(done("earlier", cost=9_990, cap_microcents=10_000))
    assert [event["threshold"] for event in await events(redis, "budget")] == [80]
    for index in range(3):
        refused = await store.admit(ask(f"r{index}", cap_microcents=10_000))
        assert refused.refusal == "budget"
    budget = await events(redis, "budget")
    assert [(event["threshold"], event["spent_microcents"]) for event in budget] == [
        (80, 9_990),
        (100, 9_990),
    ]
    # once fired, a settle that reaches the cap does not fire it again
    assert (await store.settle(done("last", cost=10, cap_microcents=10_000))).crossed == ()


async def test_a_request_larger_than_the_whole_cap_is_no_exhaustion(
    store: LimitStore, redis: aioredis.Redis
) -> None:
    refused = await store.admit(ask(cap_microcents=10_000, input_microcents=20_000))
    assert refused.refusal == "budget"
    assert await events(redis) == []


async def test_not_ready_until_rebuilt(store: LimitStore) -> None:
    refused = await store.admit(ask(require_ready=True))
    assert (refused.admitted, refused.refusal, refused.retry_after_s) == (False, "not_ready", 1)
    assert await store.rebuild_spend(OWNER, PERIOD, PERIOD_END, 990_000, now_ms=T0) is True
    result = await store.admit(ask(require_ready=True))
    assert (result.admitted, result.spent_microcents) == (True, 990_000)
    # the spend rebuilt from the ledger counts: 1,000 + 8,000 tokens do not fit in 10,000
    tight = await store.admit(ask("big", require_ready=True, max_output_tokens=8_000))
    assert (tight.clamped, tight.granted_output_tokens) == (True, 7_000)


async def test_rebuild_only_when_not_ready(store: LimitStore, redis: aioredis.Redis) -> None:
    assert await store.rebuild_spend(OWNER, PERIOD, PERIOD_END, 5_000, now_ms=T0, warned=True)
    await store.settle(done(cost=100, cap_microcents=10_000))
    assert await store.rebuild_spend(OWNER, PERIOD, PERIOD_END, 9_999, now_ms=T0) is False
    assert await store.read_spend(OWNER, PERIOD) == (5_100, 0)
    spend = await redis.hgetall(keyspace.owner_spend(OWNER, PERIOD))
    assert spend[b"warned"] == b"1"  # the 80 % event had fired before the restart
    assert (await store.settle(done("next", cost=3_000, cap_microcents=10_000))).crossed == ()


async def test_no_cap_reserves_nothing(store: LimitStore, redis: aioredis.Redis) -> None:
    result = await store.admit(ask(cap_microcents=None, max_output_tokens=10**9))
    assert (result.admitted, result.granted_output_tokens, result.reserved_microcents) == (
        True,
        10**9,
        0,
    )
    assert await store.settle(done(cost=5, cap_microcents=None))
    assert await store.read_spend(OWNER, PERIOD) == (5, 0)
    assert await events(redis, "budget") == []


async def test_concurrent_admissions_never_overspend(redis_url: str) -> None:
    # two "replicas", each with its own connection pool of 16, sharing one cap
    pools = [aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=16) for _ in "ab"]
    clients = [aioredis.Redis(connection_pool=pool) for pool in pools]
    try:
        await _race([LimitStore(client) for client in clients])
    finally:
        for client, pool in zip(clients, pools, strict=True):
            await client.aclose()
            await pool.aclose()


async def _race(replicas: list[LimitStore]) -> None:
    # ten worst cases (2,000 each) and 1,500 more: ten full, one clamped to 500 tokens, 189 refused
    cap = 21_500
    requests = [ask(f"c{index}", cap_microcents=cap, now_ms=T0 + index) for index in range(200)]
    results = await asyncio.gather(
        *(replicas[index % 2].admit(request) for index, request in enumerate(requests))
    )
    admitted = [(req, res) for req, res in zip(requests, results, strict=True) if res.admitted]
    assert len(admitted) == 11
    assert sorted(res.granted_output_tokens for _, res in admitted) == [500] + [1_000] * 10
    assert {res.refusal for res in results if not res.admitted} == {"budget"}
    store = replicas[0]
    spent, reserved = await store.read_spend(OWNER, PERIOD)
    assert (spent, reserved) == (0, cap)

    rng = random.Random(7)
    settles = [
        done(req.request_id, cost=rng.randint(0, res.reserved_microcents), cap_microcents=cap)
        for req, res in admitted
    ]
    await asyncio.gather(
        *(replicas[index % 2].settle(request) for index, request in enumerate(settles))
    )
    spent, reserved = await store.read_spend(OWNER, PERIOD)
    assert reserved == 0
    assert spent == sum(request.cost_microcents for request in settles) <= cap


async def test_redis_errors_become_one_exception() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = LimitStore(client)
    try:
        with pytest.raises(LimitStoreUnavailable):
            await store.admit(ask())
        with pytest.raises(LimitStoreUnavailable):
            await store.settle(done())
        with pytest.raises(LimitStoreUnavailable):
            await store.read_spend(OWNER, PERIOD)
    finally:
        await client.aclose()


async def test_scripts_reload_after_a_flush(store: LimitStore, redis: aioredis.Redis) -> None:
    await store.load()
    await redis.script_flush()
    assert (await store.admit(ask())).admitted
    await redis.script_flush()
    assert (await store.settle(done(cost=1))).settled
