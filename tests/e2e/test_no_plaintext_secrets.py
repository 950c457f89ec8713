"""No plaintext secret at rest or in logs: after real traffic through the gateway (sub-accounts
created and rotated, a key revoked, a BYOK provider key attached and used, webhooks created and
tested, requests sent with good, revoked and unknown keys), every log file of the gateway, every
value of every Redis key of its database and every row of every PostgreSQL table of its database
are searched for each secret the test saw in plaintext. Hashes and sealed values are fine."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from aigw.keys import generate_key, hash_key
from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import PLATFORM_KEYS

MODEL = "openai/gpt-5.4-mini"
MESSAGES = [{"role": "user", "content": "Hi"}]
ANY_GATEWAY_KEY = re.compile(rb"sk-aig-[A-Za-z0-9_-]{32,}")


def traffic(e2e: E2E, parent: Parent) -> set[str]:
    """Drive the gateway like a platform would; every secret that was in plaintext on the wire."""
    seen = {parent.key, *PLATFORM_KEYS.values()}
    byok_key = "sk-byok-" + secrets.token_urlsafe(24)
    attached = parent.call("PUT", "/provider-keys/openai", json={"api_key": byok_key})
    assert attached.status_code == 200, attached.text
    seen.add(byok_key)

    hook = parent.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["*"]})
    assert hook.status_code == 201, hook.text
    seen.add(hook.json()["secret"])
    assert parent.call("POST", f"/webhooks/{hook.json()['id']}/test").status_code == 202

    accounts = [
        parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100, byok=byok)
        for byok in (True, False, False)
    ]
    keys = [account["key"] for account in accounts]
    rotated = parent.call("POST", f"/sub-accounts/{accounts[0]['id']}/rotate", json={})
    assert rotated.status_code == 200, rotated.text
    keys.append(rotated.json()["key"])
    assert parent.call("DELETE", f"/sub-accounts/{accounts[2]['id']}").status_code == 200
    unknown = generate_key()
    seen |= {*keys, unknown}

    for key in [*keys, unknown, parent.key]:
        for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
            httpx.post(
                f"{e2e.base_url}/chat/completions",
                headers=headers,
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
                timeout=30,
            )
            httpx.get(f"{e2e.base_url}/me", headers=headers, timeout=30)
            httpx.get(f"{e2e.base_url}/sub-accounts", headers=headers, timeout=30)
    used = {request["headers"].get("authorization") for request in e2e.mock.requests()}
    assert {f"Bearer {byok_key}", f"Bearer {PLATFORM_KEYS['openai']}"} <= used
    wait_for(lambda: len(parent.call("GET", "/requests").json()["data"]) >= 3, "usage rows")
    deliveries = f"/webhooks/{hook.json()['id']}/deliveries"
    wait_for(lambda: parent.call("GET", deliveries).json()["data"], "a webhook delivery attempt")
    return seen


def wait_for(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, f"no {what} after 15 s"
        time.sleep(0.1)


async def test_no_secret_is_stored_or_logged_in_plaintext(e2e: E2E, parent: Parent) -> None:
    e2e.mock.clear()
    seen = traffic(e2e, parent)
    haystacks = {
        **log_files(e2e),
        **await redis_values(e2e.redis_url),
        **await postgres_rows(e2e.database_url),
    }
    assert len(haystacks) > 10
    stored_hash = hash_key(parent.key).encode()  # the scan does reach where keys are kept
    assert any(stored_hash in text for where, text in haystacks.items() if "redis" in where)
    assert any(stored_hash in text for where, text in haystacks.items() if "table" in where)
    leaks = sorted(
        f"{where}: {secret[:12]}…"
        for where, text in haystacks.items()
        for secret in seen
        if secret.encode() in text
    )
    assert leaks == []
    stray_keys = sorted(where for where, text in haystacks.items() if ANY_GATEWAY_KEY.search(text))
    assert stray_keys == []


def log_files(e2e: E2E) -> dict[str, bytes]:
    """Every log of the gateway's processes (`data_dir/logs`); not the supervisor's console,
    which prints the first parent key once, by design (API.md §8)."""
    folder = Path(e2e.gateway.config["data_dir"]) / "logs"
    found = {f"log {path.name}": path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert found, f"no logs in {folder}"
    return found


async def redis_values(url: str) -> dict[str, bytes]:
    """Every key of the database and its whole value, whatever its type."""
    client = aioredis.from_url(url)
    found: dict[str, bytes] = {}
    try:
        async for name in client.scan_iter(count=500):
            kind = (await client.type(name)).decode()
            if kind == "string":
                value: object = await client.get(name)
            elif kind == "hash":
                value = await client.hgetall(name)
            elif kind == "list":
                value = await client.lrange(name, 0, -1)
            elif kind == "set":
                value = await client.smembers(name)
            elif kind == "zset":
                value = await client.zrange(name, 0, -1, withscores=True)
            elif kind == "stream":
                value = await client.xrange(name)
            else:
                value = kind
            found[f"redis {name.decode(errors='replace')}"] = name + repr(value).encode()
    finally:
        await client.aclose()
    return found


async def postgres_rows(dsn: str) -> dict[str, bytes]:
    """Every row of every table of the database, each cast to text (all columns, any type)."""
    connection = await asyncpg.connect(dsn)
    found: dict[str, bytes] = {}
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        for table in tables:
            qualified = f'"{table["table_schema"]}"."{table["table_name"]}"'
            rows = await connection.fetchval(
                f"SELECT string_agg(t::text, E'\\n') FROM {qualified} t"
            )
            found[f"table {qualified}"] = (rows or "").encode()
    finally:
        await connection.close()
    assert any("usage_ledger" in name for name in found)
    return found
