"""The control plane's side of BYOK: the routes over a real PostgreSQL and Redis, sealed storage,
projection and invalidation, start-up checks and master-key rotation. The app here is the
provider-key router on the control plane's own context (as `controlplane.app` wires it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from aigw import keyspace
from aigw.config import GatewayConfig, parse_config
from aigw.secrets_box import Keyring, generate_master_key, provider_key_context
from controlplane.accounts import create_parent_account
from controlplane.clock import utc_now
from controlplane.context import Context
from controlplane.errors import install_error_handlers
from controlplane.projector import Projector
from controlplane.provider_key_service import (
    ProviderKeyService,
    ProviderKeysUnreadable,
    check_database,
)
from controlplane.provider_keys import router

KEY_A, KEY_B = generate_master_key(), generate_master_key()
PROVIDERS = """
providers:
  openai: {base_url: "https://api.openai.com/v1", api_key: "sk-platform"}
  anthropic: {base_url: "https://api.anthropic.com/v1", auth: x-api-key}
"""
BYOK = "sk-proj-byok-0123456789abcdefghij"


def config(tmp: Any, key: str | None = KEY_A, previous: str | None = None) -> GatewayConfig:
    text = f"{PROVIDERS}\ndata_dir: {tmp}\n"
    if key:
        text += f"secrets_key: {key}\n"
    if previous:
        text += f"secrets_previous_keys: [{previous}]\n"
    return parse_config(text)


@contextlib.asynccontextmanager
async def control_plane(cfg: GatewayConfig, dsn: str, redis_url: str) -> AsyncIterator[FastAPI]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        redis = aioredis.Redis.from_url(redis_url)
        service = None
        try:
            app.state.context = Context(cfg, pool, redis, Projector(pool, redis), utc_now)
            service = await ProviderKeyService.start(cfg, pool, redis, reproject_interval=0.1)
            app.state.provider_keys = service
            yield
        finally:
            if service is not None:
                await service.stop()
            await redis.aclose()
            await pool.close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    async with app.router.lifespan_context(app):
        yield app


@dataclass
class Plane:
    client: httpx.AsyncClient
    redis: aioredis.Redis
    dsn: str
    parent_id: str
    parent_key: str

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.parent_key}"}
        return await self.client.request(method, f"/v1{path}", headers=headers, **kwargs)

    async def stored(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch("SELECT * FROM provider_keys ORDER BY provider"))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig, dsn: str, redis_url: str, parent: tuple[str, str]) -> Any:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with control_plane(cfg, dsn, redis_url) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
                yield Plane(client, redis, dsn, *parent)
    finally:
        await redis.aclose()


@pytest.fixture
async def parent(pg_dsn: str, redis_url: str) -> tuple[str, str]:
    return await create_parent_account(pg_dsn, "acme", redis_url)


@pytest.fixture
async def plane(
    tmp_path: Any, pg_dsn: str, redis_url: str, parent: tuple[str, str]
) -> AsyncIterator[Plane]:
    async with running(config(tmp_path), pg_dsn, redis_url, parent) as plane:
        yield plane


async def test_put_stores_the_key_sealed_and_projects_it_sealed(plane: Plane) -> None:
    pubsub = plane.redis.pubsub()
    await pubsub.subscribe(keyspace.INVALIDATION_CHANNEL)
    await pubsub.get_message(timeout=1)

    response = await plane.call("PUT", "/provider-keys/openai", json={"api_key": f"  {BYOK}\n"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "provider_key" and body["provider"] == "openai"
    assert body["masked_key"] == "****" + BYOK[-4:] and BYOK not in response.text
    [row] = await plane.stored()
    assert all(BYOK[8:20] not in str(value) for value in dict(row).values())
    keyring = Keyring.from_config(config("/nonexistent"))
    assert keyring is not None
    context = provider_key_context(plane.parent_id, "openai")
    assert keyring.decrypt(row["ciphertext"], context) == BYOK  # surrounding whitespace dropped
    assert row["key_id"] == keyring.primary_id
    projected = await plane.redis.hgetall(keyspace.provider_keys(plane.parent_id))
    assert projected == {b"openai": row["ciphertext"].encode()}
    expected = keyspace.byok_invalidation(plane.parent_id).encode()
    deadline = time.monotonic() + 1.0
    while True:  # the channel is server-wide: other tests may publish on it too
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message["data"] == expected:
            break
        assert time.monotonic() < deadline, "no invalidation published"
    await pubsub.aclose()


async def test_get_lists_masked_and_delete_detaches(plane: Plane) -> None:
    await plane.call("PUT", "/provider-keys/openai", json={"api_key": BYOK})
    await plane.call("PUT", "/provider-keys/anthropic", json={"api_key": "short"})

    listed = (await plane.call("GET", "/provider-keys")).json()

    assert [e["provider"] for e in listed["data"]] == ["anthropic", "openai"]
    assert listed["data"][0]["masked_key"] == "****"  # too short to show any of it
    assert listed["data"][1]["last4"] == BYOK[-4:]
    deleted = await plane.call("DELETE", "/provider-keys/openai")
    assert deleted.json() == {"object": "provider_key", "provider": "openai", "deleted": True}
    projected = await plane.redis.hgetall(keyspace.provider_keys(plane.parent_id))
    assert list(projected) == [b"anthropic"]
    await plane.call("DELETE", "/provider-keys/anthropic")
    assert not await plane.redis.exists(keyspace.provider_keys(plane.parent_id))
    assert (await plane.call("DELETE", "/provider-keys/anthropic")).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/provider-keys/nosuch", {"api_key": BYOK}, 404, "provider"),
        ("/provider-keys/openai", {"api_key": ""}, 400, "api_key"),
        ("/provider-keys/openai", {"api_key": " \t "}, 400, "api_key"),
        ("/provider-keys/openai", {}, 400, "api_key"),
        ("/provider-keys/openai", {"api_key": 42}, 400, "api_key"),
        ("/provider-keys/openai", {"api_key": "sk-with space"}, 400, "api_key"),
        ("/provider-keys/openai", {"api_key": BYOK, "extra": 1}, 400, "extra"),
    ],
)
async def test_bad_input_is_an_envelope_naming_the_field(
    plane: Plane, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    response = await plane.call("PUT", path, json=body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "sk-with" not in response.text
    assert await plane.stored() == []


async def test_a_flushed_redis_gets_the_keys_back(plane: Plane) -> None:
    await plane.call("PUT", "/provider-keys/openai", json={"api_key": BYOK})
    await plane.redis.flushdb()

    deadline = time.monotonic() + 2.0
    while not await plane.redis.exists(keyspace.BYOK_PROJECTED_MARKER):
        assert time.monotonic() < deadline, "provider keys not re-projected"
        await asyncio.sleep(0.05)
    assert list(await plane.redis.hgetall(keyspace.provider_keys(plane.parent_id))) == [b"openai"]


async def test_start_up_removes_hashes_of_parents_without_keys(
    tmp_path: Any, pg_dsn: str, redis_url: str, parent: tuple[str, str]
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    stale = keyspace.provider_keys("acct_gone")
    await redis.hset(stale, "openai", "v1:00000000:AAAA")
    try:
        async with running(config(tmp_path), pg_dsn, redis_url, parent):
            assert not await redis.exists(stale)
            assert await redis.exists(keyspace.BYOK_PROJECTED_MARKER)
    finally:
        await redis.aclose()


async def test_without_a_master_key_nothing_can_be_stored(
    tmp_path: Any, pg_dsn: str, redis_url: str, parent: tuple[str, str]
) -> None:
    async with running(config(tmp_path, key=None), pg_dsn, redis_url, parent) as plane:
        response = await plane.call("PUT", "/provider-keys/openai", json={"api_key": BYOK})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "secrets_not_configured"


@pytest.mark.parametrize(("key", "says"), [(None, "no master key"), (KEY_B, "does not hold")])
async def test_start_up_refuses_keys_it_cannot_open(
    tmp_path: Any,
    pg_dsn: str,
    redis_url: str,
    parent: tuple[str, str],
    key: str | None,
    says: str,
) -> None:
    async with running(config(tmp_path), pg_dsn, redis_url, parent) as plane:
        await plane.call("PUT", "/provider-keys/openai", json={"api_key": BYOK})
    sealed_with = Keyring.from_config(config(tmp_path))
    assert sealed_with is not None

    with pytest.raises(ProviderKeysUnreadable) as raised:
        await check_database(pg_dsn, config(tmp_path, key=key))
    with pytest.raises(ProviderKeysUnreadable):
        async with control_plane(config(tmp_path, key=key), pg_dsn, redis_url):
            pass

    message = str(raised.value)
    assert says in message and sealed_with.primary_id in message and "secrets_key" in message
    assert KEY_A not in message and KEY_B not in message


async def test_rotation_reseals_every_key_with_the_new_master_key(
    tmp_path: Any, pg_dsn: str, redis_url: str, parent: tuple[str, str]
) -> None:
    async with running(config(tmp_path, KEY_A), pg_dsn, redis_url, parent) as plane:
        await plane.call("PUT", "/provider-keys/openai", json={"api_key": BYOK})
        await plane.call("PUT", "/provider-keys/anthropic", json={"api_key": "sk-ant-0123456789"})
        before = await plane.stored()

    rotating = config(tmp_path, KEY_B, previous=KEY_A)
    async with running(rotating, pg_dsn, redis_url, parent) as plane:
        after = await plane.stored()
        projected = await plane.redis.hgetall(keyspace.provider_keys(plane.parent_id))
        listed = (await plane.call("GET", "/provider-keys")).json()["data"]

    only_new = Keyring.from_config(config(tmp_path, KEY_B))
    assert only_new is not None
    assert {row["key_id"] for row in after} == {only_new.primary_id}
    assert [row["created_at"] for row in after] == [row["created_at"] for row in before]
    context = provider_key_context(parent[0], "openai")
    openai = next(row for row in after if row["provider"] == "openai")
    assert only_new.decrypt(openai["ciphertext"], context) == BYOK
    assert projected[b"openai"] == openai["ciphertext"].encode()
    assert [entry["last4"] for entry in listed] == ["6789", BYOK[-4:]]
    await check_database(pg_dsn, config(tmp_path, KEY_B))  # the old key may now go
