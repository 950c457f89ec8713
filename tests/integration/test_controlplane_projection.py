"""Key policies in Redis follow every change at once, with an invalidation message, and are
rebuilt from PostgreSQL when Redis loses them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from aigw import keyspace
from aigw.config import parse_config
from aigw.keys import hash_key
from aigw.policy import KeyPolicy
from controlplane.accounts import create_parent_account
from controlplane.app import create_app

CONFIG = parse_config(
    "tiers:\n  free: {spend_cap_cents: 500, rate_limit_rpm: 60, byok: false,"
    ' allowed_models: ["openai/gpt-5.4-mini"]}\n'
)


@dataclass
class Plane:
    client: httpx.AsyncClient
    redis: aioredis.Redis
    dsn: str
    redis_url: str
    parent_id: str
    parent_key: str

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.parent_key}"}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def policy(self, key: str) -> KeyPolicy | None:
        raw = await self.redis.get(keyspace.key_policy(hash_key(key)))
        return None if raw is None else KeyPolicy.from_json(raw)


@pytest.fixture
async def plane(pg_dsn: str, redis_url: str) -> AsyncIterator[Plane]:
    parent_id, key = await create_parent_account(pg_dsn, "acme", redis_url)
    app = create_app(CONFIG, pg_dsn, redis_url, reproject_interval=0.1)
    redis = aioredis.Redis.from_url(redis_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Plane(client, redis, pg_dsn, redis_url, parent_id, key)
    await redis.aclose()


@pytest.fixture
async def invalidations(plane: Plane) -> AsyncIterator[PubSub]:
    pubsub = plane.redis.pubsub()
    await pubsub.subscribe(keyspace.INVALIDATION_CHANNEL)
    assert await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
    yield pubsub
    await pubsub.aclose()


async def published_hashes(pubsub: PubSub, within: float = 1.0) -> set[str]:
    """Hashes announced on the invalidation channel within `within` seconds."""
    hashes: set[str] = set()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            hashes |= set(message["data"].decode().split(","))
            if hashes:
                return hashes
    return hashes


async def test_create_projects_the_policy_before_answering(plane: Plane) -> None:
    created = await plane.call(
        "POST",
        "/v1/sub-accounts",
        json={
            "name": "customer_42",
            "tier": "free",
            "rate_limit_tpm": 1000,
            "default_tag": "tenant:42",
            "expires_at": "2031-01-01T00:00:00Z",
        },
    )
    assert await plane.policy(created["key"]) == KeyPolicy(
        kind="sub_account",
        parent_id=plane.parent_id,
        sub_account_id=created["id"],
        name="customer_42",
        status="active",
        default_tag="tenant:42",
        allowed_models=("openai/gpt-5.4-mini",),
        byok=False,
        spend_cap_cents=500,
        budget_period="monthly",
        rate_limit_rpm=60,
        rate_limit_rpd=None,
        rate_limit_tpm=1000,
        expires_at=1924992000.0,
        key_expires_at=None,
    )
    ttl = await plane.redis.ttl(keyspace.key_policy(hash_key(created["key"])))
    assert ttl == -1  # a current key never expires in Redis


async def test_patch_reprojects_and_announces(plane: Plane, invalidations: PubSub) -> None:
    created = await plane.call("POST", "/v1/sub-accounts", json={"name": "c"})
    await published_hashes(invalidations)
    await plane.call(
        "PATCH",
        f"/v1/sub-accounts/{created['id']}",
        json={"allowed_models": ["google/*"], "spend_cap_cents": 42, "name": "renamed"},
    )
    assert await published_hashes(invalidations) == {hash_key(created["key"])}
    policy = await plane.policy(created["key"])
    assert policy is not None
    assert policy.allowed_models == ("google/*",)
    assert policy.spend_cap_cents == 42
    assert policy.name == "renamed"
    assert policy.usable_at(time.time())


async def test_delete_marks_the_key_disabled(plane: Plane, invalidations: PubSub) -> None:
    created = await plane.call("POST", "/v1/sub-accounts", json={"name": "c"})
    await published_hashes(invalidations)
    await plane.call("DELETE", f"/v1/sub-accounts/{created['id']}")
    assert await published_hashes(invalidations) == {hash_key(created["key"])}
    policy = await plane.policy(created["key"])
    assert policy is not None
    assert policy.status == "disabled"
    assert not policy.usable_at(time.time())


async def test_rotate_without_grace_removes_the_old_key_at_once(
    plane: Plane, invalidations: PubSub
) -> None:
    created = await plane.call("POST", "/v1/sub-accounts", json={"name": "c"})
    await published_hashes(invalidations)
    rotated = await plane.call(
        "POST", f"/v1/sub-accounts/{created['id']}/rotate", json={"grace_seconds": 0}
    )
    announced = await published_hashes(invalidations)
    assert announced == {hash_key(created["key"]), hash_key(rotated["key"])}
    assert await plane.policy(created["key"]) is None
    new = await plane.policy(rotated["key"])
    assert new is not None and new.usable_at(time.time()) and new.key_expires_at is None


async def test_rotate_with_grace_keeps_the_old_key_until_it_ends(plane: Plane) -> None:
    created = await plane.call("POST", "/v1/sub-accounts", json={"name": "c"})
    before = time.time()
    rotated = await plane.call(
        "POST", f"/v1/sub-accounts/{created['id']}/rotate", json={"grace_seconds": 60}
    )
    old = await plane.policy(created["key"])
    assert old is not None and old.key_expires_at is not None
    assert before + 59 <= old.key_expires_at <= time.time() + 61
    assert old.usable_at(time.time()) and not old.usable_at(old.key_expires_at)
    ttl = await plane.redis.ttl(keyspace.key_policy(hash_key(created["key"])))
    assert 60 < ttl <= 180  # a bit past the grace, then Redis forgets it
    new = await plane.policy(rotated["key"])
    assert new is not None and new.key_expires_at is None
    for key in (created["key"], rotated["key"]):
        me = await plane.client.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200

    # A second rotation without grace ends the first one's grace too.
    again = await plane.call("POST", f"/v1/sub-accounts/{created['id']}/rotate", json={})
    assert await plane.policy(created["key"]) is None
    assert await plane.policy(rotated["key"]) is None
    assert await plane.policy(again["key"]) is not None


async def test_the_parent_key_is_projected(plane: Plane) -> None:
    policy = await plane.policy(plane.parent_key)
    assert policy == KeyPolicy(
        kind="parent", parent_id=plane.parent_id, sub_account_id=None, name="acme"
    )


async def test_start_up_projects_everything_and_sets_the_marker(
    pg_dsn: str, redis_url: str
) -> None:
    _, parent_key = await create_parent_account(pg_dsn, "offline", None)
    redis = aioredis.Redis.from_url(redis_url)
    assert await redis.get(keyspace.key_policy(hash_key(parent_key))) is None
    app = create_app(CONFIG, pg_dsn, redis_url)
    async with app.router.lifespan_context(app):
        assert await redis.get(keyspace.key_policy(hash_key(parent_key))) is not None
        assert await redis.exists(keyspace.PROJECTED_MARKER)
    await redis.aclose()


async def test_a_flushed_redis_is_rebuilt_from_postgresql(plane: Plane) -> None:
    active = await plane.call("POST", "/v1/sub-accounts", json={"name": "a", "tier": "free"})
    disabled = await plane.call("POST", "/v1/sub-accounts", json={"name": "d"})
    await plane.call("DELETE", f"/v1/sub-accounts/{disabled['id']}")
    rotated = await plane.call("POST", "/v1/sub-accounts", json={"name": "r"})
    graced = await plane.call(
        "POST", f"/v1/sub-accounts/{rotated['id']}/rotate", json={"grace_seconds": 600}
    )
    gone = await plane.call("POST", "/v1/sub-accounts", json={"name": "g"})
    await plane.call("POST", f"/v1/sub-accounts/{gone['id']}/rotate", json={"grace_seconds": 0})
    keys = [plane.parent_key, active["key"], disabled["key"], rotated["key"], graced["key"]]
    before = {key: await plane.policy(key) for key in keys}

    await plane.redis.flushdb()
    deadline = time.monotonic() + 3
    while not await plane.redis.exists(keyspace.PROJECTED_MARKER):
        assert time.monotonic() < deadline, "the control plane did not re-project"
        await asyncio.sleep(0.05)

    assert {key: await plane.policy(key) for key in keys} == before
    assert before[disabled["key"]].status == "disabled"  # type: ignore[union-attr]
    assert before[rotated["key"]].key_expires_at is not None  # type: ignore[union-attr]
    assert await plane.policy(gone["key"]) is None


async def test_a_lost_marker_triggers_a_full_reprojection(
    plane: Plane, invalidations: PubSub
) -> None:
    await plane.call("POST", "/v1/sub-accounts", json={"name": "a"})
    await published_hashes(invalidations)
    await plane.redis.delete(keyspace.PROJECTED_MARKER)
    assert await published_hashes(invalidations, within=3) == {"*"}
    assert await plane.redis.exists(keyspace.PROJECTED_MARKER)
