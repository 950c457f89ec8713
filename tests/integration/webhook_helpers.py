"""What the webhook integration tests share: a database with parents, sub-accounts and
endpoints, the usage stream entries extproc writes (docs/internals.md), the real ingester that
turns them into outbox events, and dispatchers with a retry schedule of milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from aigw import keyspace
from aigw.keys import generate_key, hash_key, new_id
from aigw.secrets_box import Keyring
from controlplane import store, webhook_events, webhook_store
from controlplane.dispatcher import Dispatcher, DispatchSettings
from controlplane.ingester import Ingester
from controlplane.models import SETTABLE_FIELDS
from controlplane.subaccounts import new_sub_account
from controlplane.webhook_secrets import SecretBox, generate_secret

FAST = DispatchSettings(
    schedule=(0.05, 0.1, 0.2),
    jitter=0.0,
    timeout_s=2.0,
    poll_interval_s=0.05,
    lease_s=5.0,
    stop_grace_s=1.0,
)
PERIOD = "2026-11"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class World:
    pool: asyncpg.Pool
    redis: aioredis.Redis
    dsn: str
    box: SecretBox = field(default_factory=lambda: SecretBox(Keyring.from_keys(os.urandom(32))))

    async def parent(self, name: str = "acme") -> str:
        parent_id = new_id("acct")
        await self.pool.execute(
            "INSERT INTO parent_accounts (id, name, created_at) VALUES ($1, $2, now())",
            parent_id,
            name,
        )
        return parent_id

    async def sub_account(
        self, parent_id: str, name: str = "customer_42", tag: str | None = "tenant:42"
    ) -> str:
        sub_id = new_id("sa")
        await self.pool.execute(
            "INSERT INTO sub_accounts (id, parent_id, name, spend_cap_cents, default_tag,"
            " created_at, updated_at) VALUES ($1, $2, $3, 100, $4, now(), now())",
            sub_id,
            parent_id,
            name,
            tag,
        )
        return sub_id

    async def created_sub_account(
        self, parent_id: str, name: str = "c", tag: str | None = None, key_hash: str | None = None
    ) -> str:
        """As `subaccounts.create` writes one: the row, its key (`key_hash`, else a new one) and
        `sub_account.created`, in one statement; returns its id."""
        fields: dict[str, object] = {field: None for field in SETTABLE_FIELDS}
        fields |= {"name": name, "default_tag": tag, "spend_cap_cents": 100,
                   "budget_period": "monthly", "allowed_models": ["*"], "metadata": {},
                   "byok": False}  # fmt: skip
        now = datetime.now(UTC)
        asked = new_sub_account(new_id("sa"), parent_id, fields, now)
        sub = await store.insert_sub_account(
            self.pool,
            asked,
            key_hash or hash_key(generate_key()),
            webhook_events.sub_account_created(asked, now),
        )
        return sub.id

    async def endpoint(
        self, parent_id: str, url: str, events: list[str] | None = None
    ) -> tuple[str, str]:
        """A registered endpoint: (id, secret)."""
        endpoint_id, secret = new_id("wh"), generate_secret()
        await webhook_store.insert_endpoint(
            self.pool, endpoint_id, parent_id, url, events or ["*"], None,
            self.box.seal(secret, endpoint_id), datetime.now(UTC),
        )  # fmt: skip
        return endpoint_id, secret

    def dispatcher(self, settings: DispatchSettings = FAST, **kwargs: Any) -> Dispatcher:
        return Dispatcher(self.pool, self.box, dsn=self.dsn, settings=settings, **kwargs)

    async def xadd(self, *entries: dict[str, Any]) -> None:
        for entry in entries:
            owner = entry.get("sub_account_id") or entry["parent_id"]
            await self.redis.xadd(keyspace.owner_usage_stream(owner), {"e": orjson.dumps(entry)})

    async def ingest(self) -> None:
        """Everything in the stream into PostgreSQL, by the real ingester."""
        ingester = Ingester(self.pool, self.redis, block_ms=10)
        while await ingester.run_once():
            pass

    async def deliveries(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT * FROM webhook_deliveries ORDER BY id")
        return [dict(row) for row in rows]


@contextlib.asynccontextmanager
async def world(pg_dsn: str, redis_url: str) -> AsyncIterator[World]:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=8)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        yield World(pool, redis, pg_dsn)
    finally:
        await redis.aclose()
        await pool.close()


@contextlib.asynccontextmanager
async def running(*dispatchers: Dispatcher) -> AsyncIterator[None]:
    """Run dispatchers for the block; stop them (gracefully) at its end."""
    tasks = [asyncio.create_task(d.run()) for d in dispatchers]
    try:
        yield
    finally:
        for dispatcher in dispatchers:
            dispatcher.stop()
        await asyncio.gather(*tasks)


# Usage stream entries as extproc writes them (docs/internals.md, "Usage streams")


def usage(
    parent_id: str,
    sub_id: str,
    *,
    status: int = 200,
    crossed: list[int] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    at = now_ms()
    return {
        "type": "usage",
        "request_id": request_id or new_id("req"),
        "parent_id": parent_id,
        "sub_account_id": sub_id,
        "tags": ["tenant:42"],
        "model": "openai/gpt-test-pricey",
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "status": status,
        "input_tokens": 10,
        "output_tokens": 0 if status >= 400 else 100,
        "cost_microcents": 0 if status >= 400 else 1_010_000,
        "fee_microcents": 0,
        "latency_ms": 12,
        "started_at": at - 12,
        "finished_at": at,
        "period": PERIOD,
        "crossed": crossed or [],
    }


def budget(parent_id: str, sub_id: str, threshold: int) -> dict[str, Any]:
    spent = 80_000_000 if threshold == 80 else 100_000_000
    return {
        "type": "budget",
        "sub_account_id": sub_id,
        "parent_id": parent_id,
        "threshold": threshold,
        "spent_microcents": spent,
        "cap_microcents": 100_000_000,
        "period": PERIOD,
        "at": now_ms(),
    }


def rate_limited(parent_id: str, sub_id: str, at: int | None = None) -> dict[str, Any]:
    return {
        "type": "rate_limited",
        "sub_account_id": sub_id,
        "parent_id": parent_id,
        "limit": "rpm",
        "at": at or now_ms(),
    }
