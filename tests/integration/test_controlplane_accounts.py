"""Migrations and parent accounts: idempotent and safe under concurrency."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from aigw import keyspace
from aigw.keys import hash_key
from aigw.policy import KeyPolicy
from controlplane.accounts import create_parent_account, ensure_first_parent
from controlplane.migrate import migrate, migration_files
from tests.conftest import own_database


@pytest.fixture
async def empty_dsn(database_url: str) -> AsyncIterator[str]:
    """A database with no migration applied."""
    async with own_database(database_url, f"aigw_cp_empty_{os.getpid()}") as url:
        yield url


async def applied_versions(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [row["version"] for row in rows]


def test_migrations_are_numbered_sql_files() -> None:
    versions = [version for version, _ in migration_files()]
    assert versions[0] == "001_init"
    assert versions == sorted(versions)


async def test_migrations_run_again_change_nothing(pg_dsn: str) -> None:
    before = await applied_versions(pg_dsn)
    await migrate(pg_dsn)
    await migrate(pg_dsn)
    assert await applied_versions(pg_dsn) == before == [v for v, _ in migration_files()]


async def test_concurrent_migrations_apply_each_file_once(empty_dsn: str) -> None:
    await asyncio.gather(*(migrate(empty_dsn) for _ in range(4)))
    assert await applied_versions(empty_dsn) == [v for v, _ in migration_files()]


async def test_first_parent_is_created_once(pg_dsn: str, redis_url: str) -> None:
    results = await asyncio.gather(*(ensure_first_parent(pg_dsn, redis_url) for _ in range(3)))
    created = [result for result in results if result is not None]
    assert len(created) == 1
    account_id, key = created[0]
    assert re.fullmatch(r"acct_[0-9a-f]{24}", account_id)
    assert key.startswith("sk-aig-")
    assert await ensure_first_parent(pg_dsn, redis_url) is None

    redis = aioredis.Redis.from_url(redis_url)
    raw = await redis.get(keyspace.key_policy(hash_key(key)))
    await redis.aclose()
    assert raw is not None
    policy = KeyPolicy.from_json(raw)
    assert (policy.kind, policy.parent_id, policy.name) == ("parent", account_id, "default")


async def test_create_parent_account_stores_only_the_hash(pg_dsn: str) -> None:
    account_id, key = await create_parent_account(pg_dsn, "  acme  ")
    conn = await asyncpg.connect(pg_dsn)
    try:
        name = await conn.fetchval("SELECT name FROM parent_accounts WHERE id = $1", account_id)
        hashes = await conn.fetch("SELECT key_hash FROM api_keys WHERE parent_id = $1", account_id)
    finally:
        await conn.close()
    assert name == "acme"
    assert [row["key_hash"] for row in hashes] == [hash_key(key)]
    assert await ensure_first_parent(pg_dsn, None) is None


async def test_create_parent_account_without_a_reachable_redis_still_works(pg_dsn: str) -> None:
    account_id, key = await create_parent_account(pg_dsn, "acme", "redis://127.0.0.1:1/0")
    assert account_id.startswith("acct_") and key.startswith("sk-aig-")


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "x" * 201])
async def test_parent_names_are_checked(pg_dsn: str, name: str) -> None:
    with pytest.raises(ValueError, match="account name"):
        await create_parent_account(pg_dsn, name)
