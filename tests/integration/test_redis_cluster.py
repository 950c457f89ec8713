"""aigw on a real Redis Cluster (three primaries on loopback, `tests/cluster.py`): every key of
an owner and its usage shard in one slot, owners over every primary; no overage and exact rate
limits under concurrent admissions; the ingester moving every shard's entries to the ledger
exactly once; spend rebuilt after an owner's keys are lost; invalidations heard on a cluster;
provider-key hashes found on every primary; an unreachable cluster refused like an unreachable
server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from aigw import keyspace
from aigw.config import parse_config
from aigw.errors import GatewayError
from aigw.keys import hash_key
from aigw.periods import current_period
from aigw.policy import KeyPolicy
from aigw.redis_client import connect, connect_sync, warm_up
from controlplane.accounts import create_parent_account
from controlplane.app import create_app
from controlplane.ingester import Ingester
from controlplane.provider_key_projector import ProviderKeyProjector
from extproc.limits import LimitStore, LimitStoreUnavailable, SettleRequest
from extproc.policies import PolicyStore
from tests.integration.test_limits_budget import OWNER, PERIOD, T0, ask, done

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect(redis_cluster_url)
    assert isinstance(client, RedisCluster)
    await client.ping()  # discovers the nodes and slots
    yield client
    await client.aclose()


def owner_keys(owner: str) -> list[str]:
    """Every key the admission and settle scripts of one owner touch."""
    return [
        keyspace.owner_state(owner),
        keyspace.owner_spend(owner, PERIOD),
        keyspace.owner_reservations(owner, PERIOD),
        keyspace.owner_reservation_expiries(owner, PERIOD),
        *(keyspace.owner_window(owner, window) for window in ("rpm", "rpd", "tpm")),
        keyspace.owner_rate_limited_debounce(owner),
        keyspace.owner_settled(owner, "req-1"),
        keyspace.owner_usage_stream(owner),
    ]


async def test_an_owners_keys_and_its_usage_shard_share_one_slot(cluster: RedisCluster) -> None:
    owners = [f"sa_{number:04d}" for number in range(60)] + ["acct_7f3k2", "sa_9f3kQx"]
    primaries_of_owners = set()
    for owner in owners:
        slots = {await cluster.cluster_keyslot(key) for key in owner_keys(owner)}
        assert len(slots) == 1, owner
        primaries_of_owners.add(cluster.get_node_from_key(keyspace.owner_state(owner)).name)
    primaries = {node.name for node in cluster.get_primaries()}
    assert len(primaries) == 3
    assert primaries_of_owners == primaries
    shards = {cluster.get_node_from_key(stream).name for stream in keyspace.usage_streams()}
    assert shards == primaries


def test_the_blocking_client_reaches_every_primary(redis_cluster_url: str) -> None:
    client = connect_sync(redis_cluster_url)
    try:
        for stream in keyspace.usage_streams():
            client.xadd(stream, {"e": b"{}"})
        assert sum(int(client.xlen(stream)) for stream in keyspace.usage_streams()) == 64
    finally:
        client.close()


async def test_admissions_and_settlements_of_many_owners_land_on_every_primary(
    cluster: RedisCluster,
) -> None:
    store = LimitStore(cluster)
    await store.load()
    owners = [f"sa_spread{number}" for number in range(30)]
    for owner in owners:
        assert (await store.admit(ask(owner_id=owner, rpm=5))).admitted
        assert (await store.settle(done(owner_id=owner, cost=700))).settled
        assert await store.read_spend(owner, PERIOD) == (700, 0)
    sizes = [await cluster.dbsize(target_nodes=node) for node in cluster.get_primaries()]
    assert len(sizes) == 3 and all(size > 0 for size in sizes), sizes
    streams = {keyspace.owner_usage_stream(owner) for owner in owners}
    assert sum([await cluster.xlen(stream) for stream in streams]) == len(owners)


async def test_concurrent_admissions_never_overspend_on_a_cluster(redis_cluster_url: str) -> None:
    # two "replicas", each with its own cluster client, sharing one cap
    clients = [connect(redis_cluster_url) for _ in "ab"]
    replicas = [LimitStore(client) for client in clients]
    for client in clients:
        await warm_up(client)  # as extproc does before it serves
    try:
        # ten worst cases (2,000 each) and 1,500 more: ten full, one clamped to 500 tokens
        cap = 21_500
        requests = [ask(f"c{index}", cap_microcents=cap, now_ms=T0 + index) for index in range(200)]
        results = await asyncio.gather(
            *(replicas[index % 2].admit(request) for index, request in enumerate(requests))
        )
        admitted = [(req, res) for req, res in zip(requests, results, strict=True) if res.admitted]
        assert sorted(res.granted_output_tokens for _, res in admitted) == [500] + [1_000] * 10
        assert {res.refusal for res in results if not res.admitted} == {"budget"}
        assert await replicas[0].read_spend(OWNER, PERIOD) == (0, cap)

        rng = random.Random(7)
        settles = [
            done(req.request_id, cost=rng.randint(0, res.reserved_microcents), cap_microcents=cap)
            for req, res in admitted
        ]
        await asyncio.gather(
            *(replicas[index % 2].settle(request) for index, request in enumerate(settles))
        )
        spent, reserved = await replicas[1].read_spend(OWNER, PERIOD)
        assert reserved == 0
        assert spent == sum(request.cost_microcents for request in settles) <= cap
        entries = await clients[0].xrange(keyspace.owner_usage_stream(OWNER))
        usage = [orjson.loads(fields[b"e"]) for _, fields in entries]
        assert sorted(event["request_id"] for event in usage if event["type"] == "usage") == sorted(
            request.request_id for request in settles
        )
    finally:
        for client in clients:
            await client.aclose()


async def test_rate_limits_hold_on_a_cluster(cluster: RedisCluster) -> None:
    store = LimitStore(cluster)
    requests = [ask(f"r{index}", cap_microcents=None, rpm=10, now_ms=T0) for index in range(60)]
    results = await asyncio.gather(*(store.admit(request) for request in requests))
    assert sum(result.admitted for result in results) == 10
    assert {result.refusal for result in results if not result.admitted} == {"rpm"}
    entries = await cluster.xrange(keyspace.owner_usage_stream(OWNER))
    limited = [orjson.loads(fields[b"e"]) for _, fields in entries]
    assert [(event["type"], event["limit"]) for event in limited] == [("rate_limited", "rpm")]


async def test_an_unreachable_cluster_fails_closed() -> None:
    client = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", socket_connect_timeout=0.2)
    store = LimitStore(client)
    try:
        with pytest.raises(LimitStoreUnavailable):
            await store.admit(ask())
        with pytest.raises(LimitStoreUnavailable):
            await store.settle(done())
    finally:
        await client.aclose()
    policies = PolicyStore("redis+cluster://127.0.0.1:1")
    try:
        with pytest.raises(GatewayError) as raised:
            await policies.lookup(hash_key("sk-aig-unknown"))
        assert raised.value.status == 503
    finally:
        await policies.close()


async def test_invalidations_published_on_the_cluster_reach_every_cache(
    cluster: RedisCluster, redis_cluster_url: str
) -> None:
    key_hash = hash_key("sk-aig-cluster-invalidation")
    await cluster.set(keyspace.PROJECTED_MARKER, "2026-11-27T10:00:00Z")
    policy = KeyPolicy(kind="parent", parent_id="acct_c", sub_account_id=None, name="before")
    await cluster.set(keyspace.key_policy(key_hash), policy.to_json())
    policies = PolicyStore(redis_cluster_url)
    policies.start()
    try:
        for _ in range(200):
            if policies.subscribed:
                break
            await asyncio.sleep(0.02)
        assert policies.subscribed
        assert (await policies.lookup(key_hash)).name == "before"  # type: ignore[union-attr]
        renamed = KeyPolicy(kind="parent", parent_id="acct_c", sub_account_id=None, name="after")
        await cluster.set(keyspace.key_policy(key_hash), renamed.to_json())
        assert (await policies.lookup(key_hash)).name == "before"  # type: ignore[union-attr]
        await cluster.publish(keyspace.INVALIDATION_CHANNEL, key_hash)
        for _ in range(200):
            if (await policies.lookup(key_hash)).name == "after":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        assert (await policies.lookup(key_hash)).name == "after"  # type: ignore[union-attr]
    finally:
        await policies.close()


async def test_stale_provider_key_hashes_are_found_on_every_primary(
    cluster: RedisCluster, pg_dsn: str
) -> None:
    stale = [keyspace.provider_keys(f"acct_gone{number}") for number in range(30)]
    for name in stale:
        await cluster.hset(name, "openai", "v1:00000000:AAAA")
    assert len({cluster.get_node_from_key(name).name for name in stale}) == 3
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        await ProviderKeyProjector(pool, cluster).project_all()  # SCAN over every primary
    finally:
        await pool.close()
    assert await cluster.exists(*stale) == 0
    assert await cluster.exists(keyspace.BYOK_PROJECTED_MARKER)


# The usage ingester and the spend rebuild on a cluster (PostgreSQL as the ledger)


def usage_event(owner: str, request_id: str, cost: int) -> bytes:
    return orjson.dumps(
        {
            "type": "usage",
            "request_id": request_id,
            "parent_id": "acct_cluster",
            "sub_account_id": owner,
            "tags": [],
            "model": "openai/gpt-5.4-mini",
            "provider": "openai",
            "endpoint": "/v1/chat/completions",
            "status": 200,
            "input_tokens": 100,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 20,
            "cost_microcents": cost,
            "fee_microcents": 0,
            "byok": False,
            "stream": False,
            "aborted": False,
            "latency_ms": 5,
            "started_at": NOW_MS - 5,
            "finished_at": NOW_MS,
            "period": "2026-11",
        }
    )


def settle_request(owner: str, request_id: str, cost: int, cap: int | None = None) -> SettleRequest:
    period = current_period("monthly", NOW, NOW)
    return SettleRequest(
        owner_id=owner,
        request_id=request_id,
        now_ms=NOW_MS,
        period_id=period.id,
        period_end_ms=period.end_ms,
        cap_microcents=cap,
        cost_microcents=cost,
        actual_tokens=120,
        tpm_input_tokens=0,
        tpm=None,
        event=usage_event(owner, request_id, cost),
        parent_id="acct_cluster",
    )


async def backlog(cluster: RedisCluster) -> int:
    return sum([await cluster.xlen(stream) for stream in keyspace.usage_streams()])


async def test_the_ingester_moves_every_shard_to_the_ledger_exactly_once(
    cluster: RedisCluster, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LimitStore(cluster)
    owners = [f"sa_ingest{number}" for number in range(40)]
    requests = [(owner, f"req-{owner}-{n}") for owner in owners for n in range(3)]
    for owner, request_id in requests:
        await store.settle(settle_request(owner, request_id, 1_000))
    await store.settle(settle_request(owners[0], f"req-{owners[0]}-0", 1_000))  # a repeat: no-op
    shards = {keyspace.owner_usage_stream(owner) for owner in owners}
    assert len(shards) > 20
    assert await backlog(cluster) == len(requests)

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        # one control plane commits a batch and dies before acknowledging it
        crashing = Ingester(pool, cluster, consumer="crashed", batch_size=1, block_ms=10)

        async def lost_ack(entries: list[Any]) -> None:
            raise ConnectionError("the control plane died after the commit")

        monkeypatch.setattr(crashing, "_ack", lost_ack)
        with pytest.raises(ConnectionError):
            await crashing.run_once()
        stored_by_crash = await pool.fetchval("SELECT count(*) FROM usage_ledger")
        assert 0 < stored_by_crash < len(requests)

        # two live ones share the rest and take over what the dead one left pending
        live = [
            Ingester(pool, cluster, consumer=name, batch_size=7, block_ms=10, claim_idle_ms=50)
            for name in ("cp-a", "cp-b")
        ]
        for _ in range(100):
            await asyncio.gather(*(ingester.run_once() for ingester in live))
            if await backlog(cluster) == 0:
                break
            await asyncio.sleep(0.01)
        assert await backlog(cluster) == 0
        assert sum(ingester.stats.claimed for ingester in live) == stored_by_crash
        assert sum(ingester.stats.duplicates for ingester in live) == stored_by_crash

        rows = await pool.fetch("SELECT request_id FROM usage_ledger ORDER BY request_id")
        assert [row["request_id"] for row in rows] == sorted(rid for _, rid in requests)
        daily = await pool.fetchrow("SELECT sum(requests), sum(cost_microcents) FROM usage_daily")
        assert tuple(daily) == (len(requests), 1_000 * len(requests))
        for stream in shards:
            pending = await cluster.xpending(stream, keyspace.USAGE_CONSUMER_GROUP)
            assert pending["pending"] == 0

        # every primary restarted empty: the groups come back, and so does ingestion
        await cluster.flushall()
        await store.settle(settle_request(owners[1], "req-after-flush", 1_000))
        for _ in range(3):
            await live[0].run_once()
        assert await pool.fetchval(
            "SELECT count(*) FROM usage_ledger WHERE request_id = 'req-after-flush'"
        )
    finally:
        await pool.close()


@dataclass
class Plane:
    """The control plane on the cluster, with its API as a parent calls it."""

    app: Any
    client: httpx.AsyncClient
    parent_key: str

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.parent_key}"}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()


@pytest.fixture
async def plane(pg_dsn: str, redis_cluster_url: str) -> AsyncIterator[Plane]:
    _, key = await create_parent_account(pg_dsn, "acme", redis_cluster_url)
    config = parse_config("tiers: {}\n")
    app = create_app(
        config, pg_dsn, redis_cluster_url, clock=lambda: NOW, reproject_interval=0.05, ingest=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Plane(app, client, key)


async def test_spend_is_rebuilt_after_the_owners_keys_are_deleted(
    plane: Plane, cluster: RedisCluster, pg_dsn: str
) -> None:
    sub = await plane.call("POST", "/v1/sub-accounts", json={"name": "c", "spend_cap_cents": 50})
    sa = sub["id"]
    cap = 50 * 1_000_000
    store = LimitStore(cluster)
    await store.settle(settle_request(sa, "req-1", 3_000_000, cap))
    await store.settle(settle_request(sa, "req-2", 4_000_000, cap))
    pool = plane.app.state.context.pool
    await Ingester(pool, cluster, block_ms=10).run_once()  # req-1 and req-2 in the ledger
    await store.settle(settle_request(sa, "req-3", 5_000_000, cap))  # still in its shard
    assert await pool.fetchval("SELECT count(*) FROM usage_ledger") == 2

    # the owner's keys are lost (their slot's primary restarted empty, say)
    deleted = await cluster.delete(keyspace.owner_state(sa), keyspace.owner_spend(sa, "2026-11"))
    assert deleted == 2
    await plane.app.state.context.projector.project_all()
    assert await cluster.hget(keyspace.owner_state(sa), "ready") == b"1"
    assert await store.read_spend(sa, "2026-11") == (12_000_000, 0)
    view = await plane.call("GET", f"/v1/sub-accounts/{sa}")
    assert view["spend"]["spent_cents"] == 12
