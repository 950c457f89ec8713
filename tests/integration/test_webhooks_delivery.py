"""Webhook delivery against real PostgreSQL, Redis and an HTTP receiver: usage stream entries in
the documented format → the real ingester → outbox events → the dispatcher → signed POSTs
(verified with `standardwebhooks`); once per fact, retried with the same id, never blocked by a
slow receiver, never sent twice by two dispatchers, never to another parent."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from aigw.embedded import free_port
from controlplane import webhook_store
from tests.integration.webhook_helpers import (
    FAST,
    World,
    budget,
    rate_limited,
    running,
    usage,
    world,
)
from tests.webhook_receiver import Receiver, until


@pytest.fixture
async def w(pg_dsn: str, redis_url: str) -> AsyncIterator[World]:
    async with world(pg_dsn, redis_url) as value:
        yield value


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as value:
        yield value


async def test_every_event_type_arrives_signed(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    _, secret = await w.endpoint(parent, receiver.url("/all"))
    _, only_secret = await w.endpoint(
        parent, receiver.url("/exhausted"), ["sub_account.budget.exhausted"]
    )
    sub = await w.created_sub_account(parent, "customer_42", "tenant:42")
    failed = usage(parent, sub, status=502, request_id="req_failed_1")
    await w.xadd(
        usage(parent, sub, crossed=[80]),
        budget(parent, sub, 80),
        usage(parent, sub, crossed=[100]),
        budget(parent, sub, 100),
        rate_limited(parent, sub),
        failed,
    )
    await w.ingest()

    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/all")) == 5)
        assert await until(lambda: len(receiver.delivered("/exhausted")) == 1)

    events = {r.event["type"]: r.verified(secret) for r in receiver.received("/all")}
    assert set(events) == {
        "sub_account.created",
        "sub_account.budget.warning",
        "sub_account.budget.exhausted",
        "sub_account.rate_limited",
        "sub_account.request.failed",
    }
    for event in events.values():
        assert set(event) == {"type", "timestamp", "data"}
        assert event["timestamp"].endswith("Z")
        data = event["data"]
        assert (data["sub_account_id"], data["name"], data["default_tag"]) == (
            sub, "customer_42", "tenant:42",
        )  # fmt: skip
    assert events["sub_account.created"]["data"]["spend_cap_cents"] == 100
    assert events["sub_account.budget.warning"]["data"]["threshold"] == 80
    exhausted = events["sub_account.budget.exhausted"]["data"]
    assert (exhausted["threshold"], exhausted["period"]) == (100, "2026-11")
    assert exhausted["spend_cap_cents"] == 100
    assert events["sub_account.rate_limited"]["data"]["limit"] == "rpm"
    failure = events["sub_account.request.failed"]["data"]
    assert (failure["status"], failure["request_id"]) == (502, "req_failed_1")

    only = receiver.received("/exhausted")
    assert only[0].verified(only_secret)["type"] == "sub_account.budget.exhausted"
    with pytest.raises(Exception, match="signature"):
        only[0].verified(secret)  # another endpoint's secret does not verify it
    # webhook-id is the outbox event's id, the same for every endpoint
    ids = {row["type"]: row["id"] for row in await w.pool.fetch("SELECT id, type FROM events")}
    assert only[0].id == ids["sub_account.budget.exhausted"]
    assert {r.id for r in receiver.received("/all")} == set(ids.values())


async def test_budget_events_once_per_period_whatever_the_stream_repeats(
    w: World, receiver: Receiver
) -> None:
    """50 concurrent requests crossing the thresholds together, each entry claiming a crossing
    (the worst the stream can hold), ingested by three consumers at once: one event each."""
    parent = await w.parent()
    _, secret = await w.endpoint(parent, receiver.url("/hook"))
    sub = await w.sub_account(parent)
    for _ in range(50):
        await w.xadd(usage(parent, sub, crossed=[80, 100]), budget(parent, sub, 80),
                     budget(parent, sub, 100))  # fmt: skip
    await asyncio.gather(*(w.ingest() for _ in range(3)))

    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/hook")) >= 2)
        await asyncio.sleep(0.3)
    types = Counter(r.verified(secret)["type"] for r in receiver.received("/hook"))
    assert types == {"sub_account.budget.warning": 1, "sub_account.budget.exhausted": 1}


async def test_rate_limited_at_most_once_a_minute(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    await w.endpoint(parent, receiver.url("/hook"), ["sub_account.rate_limited"])
    sub = await w.sub_account(parent)
    minute = (datetime.now(UTC).timestamp() * 1000 // 60_000) * 60_000
    at = [int(minute - 60_000 + 1_000), int(minute - 60_000 + 30_000), int(minute + 1_000)]
    await w.xadd(*(rate_limited(parent, sub, moment) for moment in at))
    await w.ingest()
    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/hook")) == 2)
        await asyncio.sleep(0.2)
    assert len(receiver.received("/hook")) == 2


async def test_retries_until_the_receiver_recovers(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    endpoint, secret = await w.endpoint(parent, receiver.url("/flaky"))
    receiver.behave("/flaky", fail_first=2, fail_status=503)
    await w.xadd(rate_limited(parent, await w.sub_account(parent)))
    await w.ingest()

    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/flaky")) == 1)

    posts = receiver.received("/flaky")
    assert [r.status for r in posts] == [503, 503, 204]
    assert len({r.id for r in posts}) == 1  # the same webhook-id on every attempt
    assert all(r.verified(secret)["type"] == "sub_account.rate_limited" for r in posts)
    assert posts[1].at - posts[0].at >= FAST.schedule[0] * 0.9
    log, _ = await webhook_store.list_attempts(w.pool, endpoint, limit=10)
    assert [(a.attempt, a.status_code, a.outcome) for a in reversed(log)] == [
        (1, 503, "retrying"), (2, 503, "retrying"), (3, 204, "delivered"),
    ]  # fmt: skip
    assert {a.event_id for a in log} == {posts[0].id}
    assert [row["status"] for row in await w.deliveries()] == ["delivered"]


async def test_unreachable_and_slow_receivers_fail_after_the_schedule(
    w: World, receiver: Receiver
) -> None:
    parent = await w.parent()
    receiver.behave("/slow", delay_s=0.6)
    settings = dataclasses.replace(FAST, schedule=(0.01, 0.01), timeout_s=0.2)
    dead, _ = await w.endpoint(parent, f"http://127.0.0.1:{free_port()}/nobody-listens")
    slow, _ = await w.endpoint(parent, receiver.url("/slow"))
    await w.xadd(rate_limited(parent, await w.sub_account(parent)))
    await w.ingest()

    async with running(w.dispatcher(settings)):
        assert await _until_finished(w, 2)

    for endpoint, error in ((dead, "ConnectError"), (slow, "timeout")):
        log, _ = await webhook_store.list_attempts(w.pool, endpoint, limit=10)
        assert [a.outcome for a in reversed(log)] == ["retrying", "retrying", "failed"]
        assert all(a.status_code is None and error in (a.error or "") for a in log)
    assert {row["status"] for row in await w.deliveries()} == {"failed"}


async def _until_finished(w: World, count: int) -> bool:
    async def finished() -> int:
        query = "SELECT count(*) FROM webhook_deliveries WHERE status <> 'pending'"
        return int(await w.pool.fetchval(query))

    for _ in range(300):
        if await finished() >= count:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_slow_receiver_does_not_hold_up_the_others(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    receiver.behave("/slow", delay_s=5.0)  # beyond the test: answered after the stop
    await w.endpoint(parent, receiver.url("/slow"))
    await w.endpoint(parent, receiver.url("/fast"))
    sub = await w.sub_account(parent)
    await w.xadd(*(usage(parent, sub, status=500) for _ in range(30)))
    await w.ingest()
    settings = dataclasses.replace(FAST, per_endpoint=2, max_in_flight=8, timeout_s=8)

    async with running(w.dispatcher(settings)):
        assert await until(lambda: len(receiver.delivered("/fast")) == 30, within=2.5)
        assert len(receiver.received("/slow")) == 0  # still on its first two
    # the stop handed the slow endpoint's rows back: due again, no attempt counted
    rows = [r for r in await w.deliveries() if r["status"] == "pending"]
    assert len(rows) == 30 and all(r["lease"] is None and r["attempts"] == 0 for r in rows)


async def test_two_dispatchers_never_send_a_delivery_twice(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    await w.endpoint(parent, receiver.url("/a"))
    await w.endpoint(parent, receiver.url("/b"))
    sub = await w.sub_account(parent)
    await w.xadd(*(usage(parent, sub, status=500) for _ in range(100)))
    await w.ingest()

    async with running(w.dispatcher(), w.dispatcher()):
        assert await until(lambda: len(receiver.received()) >= 200)
        await asyncio.sleep(0.3)
    sent = Counter((r.path, r.id) for r in receiver.received())
    assert len(sent) == 200 and set(sent.values()) == {1}


async def test_parents_never_receive_each_others_events(w: World, receiver: Receiver) -> None:
    acme, globex = await w.parent("acme"), await w.parent("globex")
    _, acme_secret = await w.endpoint(acme, receiver.url("/acme"))
    _, globex_secret = await w.endpoint(globex, receiver.url("/globex"))
    acme_sub = await w.created_sub_account(acme, "a", "t:a")
    globex_sub = await w.created_sub_account(globex, "g", "t:g")
    await w.xadd(rate_limited(acme, acme_sub), usage(globex, globex_sub, status=503))
    await w.ingest()

    async with running(w.dispatcher()):
        assert await until(lambda: len(receiver.delivered("/acme")) == 2)
        assert await until(lambda: len(receiver.delivered("/globex")) == 2)
        await asyncio.sleep(0.2)
    acme_seen = {
        r.verified(acme_secret)["data"]["sub_account_id"] for r in receiver.received("/acme")
    }
    globex_seen = {
        r.verified(globex_secret)["data"]["sub_account_id"] for r in receiver.received("/globex")
    }
    assert (acme_seen, globex_seen) == ({acme_sub}, {globex_sub})


async def test_deleting_an_endpoint_cancels_what_it_still_had(w: World, receiver: Receiver) -> None:
    parent = await w.parent()
    endpoint, _ = await w.endpoint(parent, receiver.url("/gone"))
    receiver.behave("/gone", fail_first=100)
    await w.xadd(rate_limited(parent, await w.sub_account(parent)))
    await w.ingest()
    settings = dataclasses.replace(FAST, schedule=(0.2,) * 5)
    async with running(w.dispatcher(settings)):
        assert await until(lambda: len(receiver.received("/gone")) == 1)
        async with w.pool.acquire() as conn, conn.transaction():
            assert await webhook_store.delete_endpoint(conn, parent, endpoint, datetime.now(UTC))
        await asyncio.sleep(0.5)
        later_sub = await w.sub_account(parent)
        await w.xadd(rate_limited(parent, later_sub))
        await w.ingest()
        await asyncio.sleep(0.2)
    assert len(receiver.received("/gone")) == 1
    assert [row["status"] for row in await w.deliveries()] == ["cancelled"]
    assert await w.pool.fetchval("SELECT secret FROM webhook_endpoints") == ""
