"""Sliding windows on a real Redis with an injected clock: RPM, RPD, TPM, Retry-After, headers."""

from __future__ import annotations

import bisect
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from extproc.limits import AdmitRequest, AdmitResult, LimitStore, SettleRequest

SECOND = 1_000
MINUTE = 60 * SECOND
DAY = 24 * 60 * MINUTE
T0 = 1_795_000_000_500  # half a second into a 1 s bucket
OWNER = "sa_windows"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[LimitStore]:
    client = aioredis.from_url(redis_url)
    yield LimitStore(client)
    await client.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


_ids = iter(range(10**9))


def ask(now_ms: int, **changes: object) -> AdmitRequest:
    request = AdmitRequest(
        owner_id=OWNER,
        request_id=f"req_{next(_ids)}",
        now_ms=now_ms,
        period_id="2026-11",
        period_end_ms=1_796_083_200_000,
        cap_microcents=None,
        input_microcents=10,
        output_nanocents_per_token=1_000,
        max_output_tokens=100,
        min_output_tokens=16,
        reservation_ttl_ms=MINUTE,
    )
    return replace(request, **changes)  # type: ignore[arg-type]


async def admit_many(store: LimitStore, count: int, now_ms: int, **changes: object) -> list[bool]:
    return [(await store.admit(ask(now_ms, **changes))).admitted for _ in range(count)]


def bucket_end(now_ms: int, bucket_ms: int) -> int:
    return (now_ms // bucket_ms + 1) * bucket_ms


async def test_rpm_admits_exactly_the_limit_then_says_when(store: LimitStore) -> None:
    assert await admit_many(store, 5, T0, rpm=5) == [True] * 5
    refused = await store.admit(ask(T0, rpm=5))
    assert (refused.admitted, refused.refusal) == (False, "rpm")
    # the bucket of T0 leaves the window at its end + 60 s: 60.5 s from now, so 61 whole seconds
    leaves = bucket_end(T0, SECOND) + MINUTE
    assert refused.retry_after_s == 61 == -(-(leaves - T0) // SECOND)
    assert refused.rate["requests"] == (5, 0, 61)
    assert (await store.admit(ask(leaves - 1, rpm=5))).retry_after_s == 1
    assert (await store.admit(ask(leaves - 1, rpm=5))).refusal == "rpm"
    assert await admit_many(store, 6, leaves, rpm=5) == [True] * 5 + [False]


async def test_retry_after_waits_for_enough_old_buckets(store: LimitStore) -> None:
    # 2 at T0, 2 at T0 + 10 s, 1 at T0 + 20 s; a request needs one slot: the T0 bucket frees two
    for offset, count in ((0, 2), (10 * SECOND, 2), (20 * SECOND, 1)):
        assert await admit_many(store, count, T0 + offset, rpm=5) == [True] * count
    now = T0 + 30 * SECOND
    refused = await store.admit(ask(now, rpm=5))
    assert refused.retry_after_s == -(-(bucket_end(T0, SECOND) + MINUTE - now) // SECOND) == 31
    # a TPM request of 300 tokens needs 3 buckets' worth to leave: those of T0 and T0 + 10 s
    for offset in (0, 10 * SECOND, 20 * SECOND):
        await store.settle(settle_tokens(T0 + offset, T0 + offset, 0, 100))
    heavy = await store.admit(ask(now, tpm=400, tpm_input_tokens=300))
    assert heavy.refusal == "tpm"
    second_bucket_leaves = bucket_end(T0 + 10 * SECOND, SECOND) + MINUTE
    assert heavy.retry_after_s == -(-(second_bucket_leaves - now) // SECOND) == 41


async def test_no_double_burst_at_a_minute_boundary(store: LimitStore) -> None:
    base = 1_795_000_020_000  # a whole minute
    assert await admit_many(store, 10, base + 59_900, rpm=10) == [True] * 10
    assert await admit_many(store, 10, base + 60_100, rpm=10) == [False] * 10
    assert await admit_many(store, 10, base + 119_899, rpm=10) == [False] * 10
    assert await admit_many(store, 11, base + 120_000, rpm=10) == [True] * 10 + [False]


async def test_random_traffic_never_exceeds_and_refuses_at_most_one_bucket_early(
    store: LimitStore,
) -> None:
    limit, rng = 20, random.Random(42)
    times = sorted(T0 + rng.randrange(4 * MINUTE) for _ in range(400))
    admitted: list[int] = []
    for now in times:
        result = await store.admit(ask(now, rpm=limit))
        in_exact_window = len(admitted) - bisect.bisect_left(admitted, now - MINUTE)
        in_padded_window = len(admitted) - bisect.bisect_left(admitted, now - MINUTE - SECOND)
        if result.admitted:
            admitted.append(now)
            assert in_exact_window < limit
        else:
            assert in_padded_window >= limit  # refused only when one more bucket would be full
    for index, start in enumerate(admitted):
        end = bisect.bisect_right(admitted, start + MINUTE)
        assert end - index <= limit  # no closed 60 s interval holds more than the limit
    assert len(admitted) > 3 * limit


async def test_windows_stay_small(store: LimitStore, redis: aioredis.Redis) -> None:
    limits = {"rpm": 10**6, "rpd": 10**6, "tpm": 10**9, "tpm_input_tokens": 5}
    for step in range(0, 5 * MINUTE, 700):
        assert (await store.admit(ask(T0 + step, **limits))).admitted
    rpm, tpm = keyspace.owner_window(OWNER, "rpm"), keyspace.owner_window(OWNER, "tpm")
    assert await redis.hlen(rpm) <= 61 + 3  # buckets of one window, n, lo, hi
    assert await redis.hlen(tpm) <= 61 + 3
    assert 0 < await redis.pttl(rpm) <= MINUTE + SECOND
    rpd = keyspace.owner_window(OWNER, "rpd")
    for step in range(0, 2 * DAY, 7 * MINUTE):
        assert (await store.admit(ask(T0 + 5 * MINUTE + step, **limits))).admitted
    assert await redis.hlen(rpd) <= 289 + 3
    assert 0 < await redis.pttl(rpd) <= DAY + 5 * MINUTE


async def test_rpd(store: LimitStore) -> None:
    hour = 60 * MINUTE
    for offset in (0, hour, 2 * hour):
        assert (await store.admit(ask(T0 + offset, rpd=3))).admitted
    refused = await store.admit(ask(T0 + 3 * hour, rpd=3))
    assert refused.refusal == "rpd"
    leaves = bucket_end(T0, 5 * MINUTE) + DAY
    assert refused.retry_after_s == -(-(leaves - (T0 + 3 * hour)) // SECOND)
    assert refused.rate["requests"][:2] == (3, 0)
    assert (await store.admit(ask(leaves - 1, rpd=3))).refusal == "rpd"
    assert (await store.admit(ask(leaves, rpd=3))).admitted


def settle_tokens(now: int, admitted: int, input_bound: int, actual: int) -> SettleRequest:
    return SettleRequest(
        owner_id=OWNER,
        request_id=f"settle_{next(_ids)}",
        now_ms=now,
        period_id="2026-11",
        period_end_ms=1_796_083_200_000,
        cap_microcents=None,
        cost_microcents=0,
        actual_tokens=actual,
        tpm_input_tokens=input_bound,
        tpm=1_000,
        event=b"",
        admitted_ms=admitted,
    )


async def test_tpm_counts_the_input_bound_then_the_actual_tokens(store: LimitStore) -> None:
    first = await store.admit(ask(T0, tpm=1_000, tpm_input_tokens=600))
    assert first.rate["tokens"] == (1_000, 400, 61)
    refused = await store.admit(ask(T0 + SECOND, tpm=1_000, tpm_input_tokens=600))
    assert refused.refusal == "tpm"
    # the first used 150 tokens in all: 450 of its bound are given back, in its own bucket
    await store.settle(settle_tokens(T0 + 2 * SECOND, T0, 600, 150))
    second = await store.admit(ask(T0 + 3 * SECOND, tpm=1_000, tpm_input_tokens=600))
    assert second.rate["tokens"][1] == 1_000 - 150 - 600
    # the second used 700: 100 more than its bound
    await store.settle(settle_tokens(T0 + 4 * SECOND, T0 + 3 * SECOND, 600, 700))
    probe = await store.admit(ask(T0 + 5 * SECOND, tpm=1_000, tpm_input_tokens=0))
    assert probe.rate["tokens"][1] == 1_000 - 150 - 700
    # once the first bucket has left, only the second request's 700 count
    later = await store.admit(ask(bucket_end(T0, SECOND) + MINUTE, tpm=1_000, tpm_input_tokens=0))
    assert later.rate["tokens"][1] == 300


async def test_tpm_correction_never_goes_below_zero_or_into_an_old_bucket(
    store: LimitStore,
) -> None:
    await store.admit(ask(T0, tpm=1_000, tpm_input_tokens=100))
    await store.settle(settle_tokens(T0, T0, 5_000, 0))  # a bigger give-back than was counted
    probe = await store.admit(ask(T0, tpm=1_000, tpm_input_tokens=0))
    assert probe.rate["tokens"][1] == 1_000
    await store.admit(ask(T0 + SECOND, tpm=1_000, tpm_input_tokens=300))
    # admitted 2 minutes ago: its bucket is gone, so a give-back changes nothing...
    await store.settle(settle_tokens(T0 + 2 * SECOND, T0 - 2 * MINUTE, 500, 0))
    probe = await store.admit(ask(T0 + 2 * SECOND, tpm=1_000, tpm_input_tokens=0))
    assert probe.rate["tokens"][1] == 700
    # ...and extra tokens count from now
    await store.settle(settle_tokens(T0 + 2 * SECOND, T0 - 2 * MINUTE, 500, 600))
    probe = await store.admit(ask(T0 + 2 * SECOND, tpm=1_000, tpm_input_tokens=0))
    assert probe.rate["tokens"][1] == 600


async def test_a_request_over_the_whole_tpm_is_refused(store: LimitStore) -> None:
    refused = await store.admit(ask(T0, tpm=1_000, tpm_input_tokens=1_001))
    assert (refused.refusal, refused.retry_after_s) == ("tpm", 61)


async def test_owners_are_independent(store: LimitStore) -> None:
    assert await admit_many(store, 3, T0, rpm=3) == [True] * 3
    assert await admit_many(store, 3, T0, rpm=3, owner_id="sa_other") == [True] * 3
    assert (await store.admit(ask(T0, rpm=3))).refusal == "rpm"
    assert (await store.admit(ask(T0, rpm=3, owner_id="sa_other"))).refusal == "rpm"
    assert (await store.admit(ask(T0, rpm=3, owner_id="sa_third"))).admitted


async def test_a_refusal_counts_against_nothing(store: LimitStore, redis: aioredis.Redis) -> None:
    limits = {"rpm": 2, "rpd": 100, "tpm": 1_000, "tpm_input_tokens": 10}
    assert await admit_many(store, 2, T0, **limits) == [True, True]
    windows = [keyspace.owner_window(OWNER, name) for name in ("rpm", "rpd", "tpm")]
    before = [await redis.hgetall(key) for key in windows]
    for _ in range(5):
        assert (await store.admit(ask(T0 + 1, **limits))).refusal == "rpm"
    # a budget refusal (the cap cannot pay) counts in no window either
    broke = await store.admit(ask(T0 + 1, cap_microcents=5, rpd=100, tpm=1_000))
    assert broke.refusal == "budget"
    assert [await redis.hgetall(key) for key in windows] == before


async def test_rate_limited_event_at_most_once_a_minute(
    store: LimitStore, redis: aioredis.Redis
) -> None:
    await store.admit(ask(T0, rpm=1, parent_id="acct_w"))
    for offset in range(0, 60 * SECOND, 5 * SECOND):
        assert (await store.admit(ask(T0 + offset, rpm=1, parent_id="acct_w"))).refusal == "rpm"
    entries = await redis.xrange(keyspace.owner_usage_stream(OWNER))
    events = [orjson.loads(fields[b"e"]) for _, fields in entries]
    assert events == [
        {
            "type": "rate_limited",
            "sub_account_id": OWNER,
            "parent_id": "acct_w",
            "limit": "rpm",
            "at": T0,
        }
    ]
    assert (await store.admit(ask(T0 + 60 * SECOND, rpm=1))).refusal == "rpm"
    assert await redis.xlen(keyspace.owner_usage_stream(OWNER)) == 2


def figures(result: AdmitResult) -> dict[str, tuple[int, int, int]]:
    return result.rate


async def test_ratelimit_header_figures(store: LimitStore) -> None:
    assert figures(await store.admit(ask(T0))) == {}
    first = await store.admit(ask(T0, rpm=5, rpd=100, tpm=1_000, tpm_input_tokens=200))
    assert figures(first) == {"requests": (5, 4, 61), "tokens": (1_000, 800, 61)}
    # rpd is the tighter one once fewer requests remain in the day than in the minute
    second = await store.admit(ask(T0 + 10 * SECOND, rpm=5, rpd=3, tpm=1_000, tpm_input_tokens=0))
    day_empty = bucket_end(T0 + 10 * SECOND, 5 * MINUTE) + DAY - (T0 + 10 * SECOND)
    assert second.rate["requests"] == (3, 1, -(-day_empty // SECOND))
    assert second.rate["tokens"] == (1_000, 800, 51)
    # nothing counted for a minute and more: back to the full limit, nothing to reset
    idle = await store.admit(ask(T0 + 5 * MINUTE, rpm=5, tpm=1_000, tpm_input_tokens=0))
    assert figures(idle) == {"requests": (5, 4, 61), "tokens": (1_000, 1_000, 0)}
