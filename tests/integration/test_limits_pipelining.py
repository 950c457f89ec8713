"""Script calls that overlap go to Redis as one pipeline (extproc.limits.pipelining), and each
caller still gets exactly its own answer: its reply, its script's error, or Redis's failure.
Against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from aigw.redis_client import connect
from extproc.limits.pipelining import PipelinedScripts

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL_ON_BAD = (
    "if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. KEYS[1]) end return 1"
)
COUNT = "return redis.call('INCR', KEYS[1])"


NAME = "aigw-pipelining-test"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = connect(redis_url, socket_timeout=5, client_name=NAME)
    yield redis
    await redis.aclose()


async def counting(client: aioredis.Redis, counter: str) -> tuple[PipelinedScripts, AsyncScript]:
    """New `PipelinedScripts` over `client`, and the COUNT script, with `counter` at 0."""
    await client.delete(counter)
    return PipelinedScripts(client), client.register_script(COUNT)


async def test_overlapping_calls_each_get_their_own_reply_over_one_connection(
    client: aioredis.Redis,
) -> None:
    """Without pipelining, 200 calls at once would take 100 connections (the pool's size) and
    wait for them."""
    scripts = PipelinedScripts(client)
    echo = client.register_script(ECHO)
    await echo(["warm"], ["up"])
    replies = await asyncio.gather(
        *(scripts.run(echo, [f"key-{i}"], [f"value-{i}"]) for i in range(200))
    )
    assert replies == [[f"key-{i}".encode(), f"value-{i}".encode()] for i in range(200)]
    connections = [c for c in await client.client_list() if c["name"] == NAME]
    assert len(connections) <= 2  # the one the batches hold, and the test's own


async def test_one_calls_script_error_is_its_own(client: aioredis.Redis) -> None:
    scripts = PipelinedScripts(client)
    checked = client.register_script(FAIL_ON_BAD)
    await checked(["warm"], ["ok"])
    outcomes = await asyncio.gather(
        *(scripts.run(checked, [f"k{i}"], ["bad" if i == 7 else "ok"]) for i in range(20)),
        return_exceptions=True,
    )
    assert [o for i, o in enumerate(outcomes) if i != 7] == [1] * 19
    assert isinstance(outcomes[7], ResponseError)
    assert "refused k7" in str(outcomes[7])


async def test_a_script_flushed_from_redis_is_loaded_again(client: aioredis.Redis) -> None:
    scripts, count = await counting(client, "pipelined-counter")
    await scripts.run(count, ["pipelined-counter"], [])
    await client.script_flush()  # as after a restart of Redis: NOSCRIPT for every call
    replies = await asyncio.gather(
        *(scripts.run(count, ["pipelined-counter"], []) for _ in range(50))
    )
    assert sorted(replies) == list(range(2, 52))  # each ran exactly once
    assert int(await client.get("pipelined-counter")) == 51


async def test_a_cancelled_caller_waiting_in_the_queue_is_never_sent(
    client: aioredis.Redis,
) -> None:
    scripts, count = await counting(client, "cancelled-counter")
    first = asyncio.create_task(scripts.run(count, ["cancelled-counter"], []))
    await asyncio.sleep(0)  # first is in flight: the next ones queue
    queued = [asyncio.create_task(scripts.run(count, ["cancelled-counter"], [])) for _ in range(5)]
    await asyncio.sleep(0)
    queued[2].cancel()
    await asyncio.gather(first, *queued, return_exceptions=True)
    assert queued[2].cancelled()
    assert int(await client.get("cancelled-counter")) == 5


async def test_a_connection_redis_closed_is_replaced_without_failing_a_call(
    client: aioredis.Redis,
) -> None:
    """The batches' connection is held between calls: when Redis closes it (a restart, its idle
    `timeout`), the next call still gets its reply, and each script ran once."""
    scripts, count = await counting(client, "replaced-counter")
    assert await scripts.run(count, ["replaced-counter"], []) == 1
    for expected in (2, 3):
        held = [c["id"] for c in await client.client_list() if c["name"] == NAME]
        for connection_id in held:
            await client.client_kill_filter(_id=connection_id, skipme=True)
        assert await scripts.run(count, ["replaced-counter"], []) == expected
    assert int(await client.get("replaced-counter")) == 3


async def test_redis_gone_fails_every_overlapping_call_and_none_hangs() -> None:
    with_nothing = connect("redis://127.0.0.1:1/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    scripts = PipelinedScripts(with_nothing)
    echo = with_nothing.register_script(ECHO)
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(scripts.run(echo, ["k"], ["v"]) for _ in range(30)), return_exceptions=True
            ),
            timeout=10,
        )
    finally:
        await with_nothing.aclose()
    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes


async def test_many_calls_handed_over_at_once_get_their_replies_in_order(
    client: aioredis.Redis,
) -> None:
    """`run_many` (the settler's batches): one pipeline, each call's reply or its own error in
    its place, also when it has to queue behind a call in flight."""
    scripts = PipelinedScripts(client)
    checked = client.register_script(FAIL_ON_BAD)
    await checked(["warm"], ["ok"])
    in_flight = asyncio.create_task(scripts.run(checked, ["first"], ["ok"]))
    await asyncio.sleep(0)
    calls = [([f"k{i}"], ["bad" if i == 3 else "ok"]) for i in range(8)]

    outcomes = await scripts.run_many(checked, calls)

    assert await in_flight == 1
    assert [o for i, o in enumerate(outcomes) if i != 3] == [1] * 7
    assert isinstance(outcomes[3], ResponseError) and b"k3" in str(outcomes[3]).encode()


async def test_calls_that_may_wait_ride_with_the_next_call_ahead_of_it(
    client: aioredis.Redis,
) -> None:
    """A request's settle waits for the next request's admission and goes in its batch, first:
    the admission sees the settled state, and neither waits out the settle's allowance."""
    scripts, count = await counting(client, "riding-counter")
    waiting = asyncio.create_task(
        scripts.run_many(count, [(["riding-counter"], [])] * 2, may_wait_s=30)
    )
    await asyncio.sleep(0.2)  # Redis is free: without company they would be back by now
    assert not waiting.done()

    assert await asyncio.wait_for(scripts.run(count, ["riding-counter"], []), 10) == 3
    assert await asyncio.wait_for(waiting, 10) == [1, 2]


async def test_calls_that_may_wait_go_on_their_own_when_no_call_comes(
    client: aioredis.Redis,
) -> None:
    scripts, count = await counting(client, "alone-counter")
    replies = await asyncio.wait_for(
        scripts.run_many(count, [(["alone-counter"], [])], may_wait_s=0.01), 10
    )
    assert replies == [1]
