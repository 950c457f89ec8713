"""Key policies against a real Redis: lookup, cache invalidation by pub/sub, reconnects,
the projected marker, and failing closed when Redis is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from aigw.errors import GatewayError
from aigw.keys import generate_key, hash_key
from aigw.policy import KeyPolicy
from extproc.policies import REDIS_TIMEOUT, SUBSCRIBER_NAME, PolicyStore
from tests.faults import RedisServer

POLICY = KeyPolicy(kind="sub_account", parent_id="acct_1", sub_account_id="sa_1", name="a")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    await client.set(keyspace.PROJECTED_MARKER, "2026-11-27T10:00:00Z")
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[PolicyStore]:
    store = PolicyStore(redis_url)
    store.start()
    await eventually(lambda: store.subscribed)
    yield store
    await store.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 1.0) -> float:
    """Poll until `check` holds; return how long it took, fail after `within` seconds."""
    start = time.monotonic()
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        assert time.monotonic() - start < within, "not within the deadline"
        await asyncio.sleep(0.01)


async def put(redis: aioredis.Redis, key_hash: str, policy: KeyPolicy) -> None:
    await redis.set(keyspace.key_policy(key_hash), policy.to_json())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_lookup_finds_a_policy_and_none_for_an_unknown_key(
    store: PolicyStore, redis: aioredis.Redis
) -> None:
    key_hash = hash_key(generate_key())
    await put(redis, key_hash, POLICY)
    assert await store.lookup(key_hash) == POLICY
    assert await store.lookup(hash_key(generate_key())) is None


async def test_a_published_change_is_seen_within_one_second(
    store: PolicyStore, redis: aioredis.Redis
) -> None:
    key_hash, other = hash_key(generate_key()), hash_key(generate_key())
    await put(redis, key_hash, POLICY)
    assert await store.lookup(key_hash) == POLICY
    changed = dataclasses.replace(POLICY, status="disabled")
    await put(redis, key_hash, changed)
    assert await store.lookup(key_hash) == POLICY  # cached: Redis is not read again

    await redis.publish(keyspace.INVALIDATION_CHANNEL, f"{other},{key_hash}")

    async def sees_change() -> bool:
        return await store.lookup(key_hash) == changed

    assert await eventually(sees_change) < 1.0


async def test_star_drops_every_cached_policy(store: PolicyStore, redis: aioredis.Redis) -> None:
    hashes = [hash_key(generate_key()) for _ in range(3)]
    for key_hash in hashes:
        await put(redis, key_hash, POLICY)
        await store.lookup(key_hash)
    for key_hash in hashes:
        await redis.delete(keyspace.key_policy(key_hash))

    await redis.publish(keyspace.INVALIDATION_CHANNEL, "*")

    async def all_gone() -> bool:
        return all([await store.lookup(key_hash) is None for key_hash in hashes])

    await eventually(all_gone)


async def test_a_reconnect_of_the_subscription_clears_the_cache(
    store: PolicyStore, redis: aioredis.Redis
) -> None:
    key_hash = hash_key(generate_key())
    await put(redis, key_hash, POLICY)
    await store.lookup(key_hash)
    changed = dataclasses.replace(POLICY, name="renamed")
    await put(redis, key_hash, changed)  # changed without a publish: only a reconnect shows it
    assert await store.lookup(key_hash) == POLICY

    clients = await redis.client_list(_type="pubsub")
    ids = [client["id"] for client in clients if client.get("name") == SUBSCRIBER_NAME]
    assert ids
    for client_id in ids:
        await redis.client_kill_filter(_id=client_id)

    async def sees_change() -> bool:
        return await store.lookup(key_hash) == changed

    await eventually(sees_change, within=2.0)
    await eventually(lambda: store.subscribed, within=2.0)


async def test_unknown_key_before_policies_are_projected_is_503(
    store: PolicyStore, redis: aioredis.Redis
) -> None:
    await redis.delete(keyspace.PROJECTED_MARKER)
    with pytest.raises(GatewayError) as raised:
        await store.lookup(hash_key(generate_key()))
    assert (raised.value.status, raised.value.code) == (503, "gateway_unavailable")


async def test_redis_down_is_503_at_once() -> None:
    store = PolicyStore(f"redis://127.0.0.1:{closed_port()}/0")
    store.start()
    try:
        start = time.monotonic()
        with pytest.raises(GatewayError) as raised:
            await store.lookup(hash_key(generate_key()))
        assert time.monotonic() - start < 0.5
        assert (raised.value.status, raised.value.code) == (503, "gateway_unavailable")
        assert not store.subscribed
    finally:
        await store.close()


async def test_redis_that_does_not_answer_is_503_after_one_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        store = PolicyStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        try:
            start = time.monotonic()
            with pytest.raises(GatewayError) as raised:
                await store.lookup(hash_key(generate_key()))
            assert time.monotonic() - start < REDIS_TIMEOUT + 0.3
            assert raised.value.code == "gateway_unavailable"
        finally:
            await store.close()


async def test_without_the_subscription_nothing_is_cached(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Lookups still work from Redis while invalidations cannot arrive, and are never cached."""
    key_hash = hash_key(generate_key())
    await put(redis, key_hash, POLICY)
    store = PolicyStore(redis_url)
    try:
        assert not store.subscribed  # not started: no subscription
        assert await store.lookup(key_hash) == POLICY
        changed = dataclasses.replace(POLICY, name="renamed")
        await put(redis, key_hash, changed)
        assert await store.lookup(key_hash) == changed
    finally:
        await store.close()


async def test_a_burst_of_first_requests_from_one_key_reads_its_policy_once(
    tmp_path: Path,
) -> None:
    """256 requests of a key that was never seen arrive together: all of them get its policy,
    from one Redis read (redis-py would otherwise open one connection per request, and fail
    the 101st)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = aioredis.from_url(server.url)
    store = PolicyStore(server.url)
    try:
        await client.set(keyspace.PROJECTED_MARKER, "2026-11-27T10:00:00Z")
        key_hash = hash_key(generate_key())
        await put(client, key_hash, POLICY)
        await client.config_resetstat()
        found = await asyncio.gather(*(store.lookup(key_hash) for _ in range(256)))
        assert found == [POLICY] * 256
        stats = await client.info("commandstats")
        assert stats["cmdstat_get"]["calls"] == 1
    finally:
        await store.close()
        await client.aclose()
        server.stop()
