"""Webhooks survive restarts: deliveries are rows committed with their event, a stopped or
killed dispatcher leaves nothing behind, and every resend carries the event's own id."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import sys
import textwrap
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import asyncpg
import pytest

from aigw.keys import generate_key, hash_key
from aigw.secrets_box import Keyring
from controlplane import store
from controlplane.webhook_secrets import SecretBox
from tests.integration.webhook_helpers import FAST, World, rate_limited, running, usage, world
from tests.webhook_receiver import Receiver, until


@pytest.fixture
async def w(pg_dsn: str, redis_url: str) -> AsyncIterator[World]:
    async with world(pg_dsn, redis_url) as value:
        yield value


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as value:
        yield value


def assert_once_per_event(receiver: Receiver, path: str, events: set[str]) -> None:
    """Every event delivered (2xx) exactly once, and every POST of it under its own id."""
    delivered = defaultdict(int)
    for post in receiver.delivered(path):
        delivered[post.id] += 1
    assert set(delivered) == events
    assert set(delivered.values()) == {1}
    assert {post.id for post in receiver.received(path)} <= events


async def event_ids(w: World) -> set[str]:
    return {row["id"] for row in await w.pool.fetch("SELECT id FROM events")}


async def test_a_restart_mid_retry_loses_nothing(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    await w.endpoint(parent, receiver.url("/hook"))
    sub = await w.sub_account(parent)
    receiver.behave("/hook", fail_first=20)
    await w.xadd(*(usage(parent, sub, status=500) for _ in range(20)))
    await w.ingest()
    settings = dataclasses.replace(FAST, schedule=(0.5, 0.5))

    async with running(w.dispatcher(settings)):
        assert await until(lambda: len(receiver.received("/hook")) == 20)
    assert receiver.delivered("/hook") == []  # stopped with 20 retries pending

    async with running(w.dispatcher(settings)):  # "restarted"
        assert await until(lambda: len(receiver.delivered("/hook")) == 20)
        await asyncio.sleep(0.2)
    assert_once_per_event(receiver, "/hook", await event_ids(w))
    attempts = await w.pool.fetch("SELECT attempt, outcome FROM webhook_attempts")
    assert sorted((a["attempt"], a["outcome"]) for a in attempts) == (
        [(1, "retrying")] * 20 + [(2, "delivered")] * 20
    )


_KILLABLE = textwrap.dedent(
    """
    import asyncio, base64, os, sys, dataclasses
    import asyncpg
    from aigw.secrets_box import Keyring
    from controlplane.dispatcher import Dispatcher, DispatchSettings
    from controlplane.webhook_secrets import SecretBox

    async def main():
        pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=4)
        box = SecretBox(Keyring.from_keys(base64.b64decode(os.environ["TEST_MASTER_KEY"])))
        settings = DispatchSettings(timeout_s=10, lease_s=1.5, poll_interval_s=0.05)
        await Dispatcher(pool, box, dsn=sys.argv[1], settings=settings).run()

    asyncio.run(main())
    """
)


async def test_a_killed_dispatcher_leaves_nothing_behind(w: World, receiver: Receiver) -> None:
    """SIGKILL while attempts are in flight: after their lease another dispatcher sends them,
    under the same ids; nothing is lost and nothing is sent under a new id."""
    key = os.urandom(32)
    w.box = SecretBox(Keyring.from_keys(key))
    parent = await w.parent()
    await w.endpoint(parent, receiver.url("/hook"))
    receiver.behave("/hook", delay_s=0.8)  # each attempt is in flight for a while
    sub = await w.sub_account(parent)
    await w.xadd(*(usage(parent, sub, status=500) for _ in range(12)))
    await w.ingest()

    env = os.environ | {"TEST_MASTER_KEY": base64.b64encode(key).decode()}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", _KILLABLE, w.dsn, env=env)
    try:
        claimed = "SELECT count(*) FROM webhook_deliveries WHERE lease IS NOT NULL"
        for _ in range(500):
            if await w.pool.fetchval(claimed) >= 4:
                break
            await asyncio.sleep(0.02)
        assert await w.pool.fetchval(claimed) >= 4, "the dispatcher never claimed anything"
    finally:
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)

    settings = dataclasses.replace(FAST, per_endpoint=12, max_in_flight=12)
    done = "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'"
    async with running(w.dispatcher(settings)):
        for _ in range(750):
            if await w.pool.fetchval(done) == 12:
                break
            await asyncio.sleep(0.02)
    ids = await event_ids(w)
    assert {post.id for post in receiver.delivered("/hook")} == ids
    assert {post.id for post in receiver.received("/hook")} <= ids
    rows = await w.deliveries()
    assert {row["status"] for row in rows} == {"delivered"}


async def test_an_event_commits_or_vanishes_with_its_fact(w: World, receiver: Receiver) -> None:
    """`sub_account.created`, its deliveries and the sub-account's key are written by the
    statement that inserts the sub-account: when one part fails, none of it remains."""
    parent = await w.parent()
    await w.endpoint(parent, receiver.url("/hook"))
    taken_key_hash = hash_key(generate_key())
    await store.insert_key(w.pool, taken_key_hash, parent, None, datetime.now(UTC))

    with pytest.raises(asyncpg.UniqueViolationError):
        await w.created_sub_account(parent, key_hash=taken_key_hash)
    assert (
        await w.pool.fetchval("SELECT count(*) FROM sub_accounts WHERE parent_id = $1", parent) == 0
    )
    assert await event_ids(w) == set()
    assert await w.deliveries() == []

    sub_id = await w.created_sub_account(parent)
    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/hook")) == 1)
    assert receiver.delivered("/hook")[0].event["data"]["sub_account_id"] == sub_id


async def test_an_endpoint_gets_the_events_after_its_creation(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    sub = await w.sub_account(parent)
    at = int(datetime.now(UTC).timestamp() * 1000)
    await w.xadd(rate_limited(parent, sub, at - 120_000))
    await w.ingest()
    await w.endpoint(parent, receiver.url("/late"))
    await w.xadd(rate_limited(parent, sub, at))
    await w.ingest()
    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/late")) == 1)
        await asyncio.sleep(0.2)
    assert len(receiver.received("/late")) == 1
