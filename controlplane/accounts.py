"""Parent accounts, for the command line (`aigw accounts create`) and the first start (`aigw up`).

Both work whether or not the gateway runs: the account is written to PostgreSQL and, when a
Redis URL is given, its key is projected at once (otherwise the next start-up projects it).
"""

from __future__ import annotations

import asyncpg

from aigw.keys import generate_key, hash_key, new_id
from aigw.redis_client import connect as connect_redis
from controlplane import store
from controlplane.clock import utc_now
from controlplane.projector import Projector

FIRST_PARENT_NAME = "default"


async def create_parent_account(
    dsn: str, name: str, redis_url: str | None = None
) -> tuple[str, str]:
    """Create a parent account; returns (id, plaintext key). The key is shown only here."""
    name = _checked_name(name)
    async with _pool(dsn) as pool:
        async with pool.acquire() as conn, conn.transaction():
            parent_id, key = await _insert(conn, name)
        await _project(pool, redis_url, parent_id)
    return parent_id, key


async def ensure_first_parent(dsn: str, redis_url: str | None) -> tuple[str, str] | None:
    """Create the parent `default` when no parent exists; (id, key) then, else None.

    Safe to call concurrently: only one caller ever creates it.
    """
    async with _pool(dsn) as pool:
        async with pool.acquire() as conn, conn.transaction():
            if not await store.lock_first_parent(conn):
                return None
            parent_id, key = await _insert(conn, FIRST_PARENT_NAME)
        await _project(pool, redis_url, parent_id)
    return parent_id, key


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or "\x00" in name:
        raise ValueError("an account name is 1 to 200 characters of text")
    return name


def _pool(dsn: str) -> asyncpg.Pool:
    return asyncpg.create_pool(dsn, min_size=1, max_size=1)


async def _insert(conn: asyncpg.Connection, name: str) -> tuple[str, str]:
    parent_id, key = new_id("acct"), generate_key()
    await store.insert_parent(conn, parent_id, name, hash_key(key), utc_now())
    return parent_id, key


async def _project(pool: asyncpg.Pool, redis_url: str | None, parent_id: str) -> None:
    """Project the parent's key; a Redis that does not answer is logged, not raised."""
    if not redis_url:
        return
    redis = connect_redis(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        await Projector(pool, redis).project_parent(parent_id)
    finally:
        await redis.aclose()
