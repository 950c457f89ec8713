"""Usage analytics at scale: seed a large usage ledger, then time the usage API over HTTP.

    .venv/bin/python -m bench.seed_usage --rows 1000000 [--database-url URL] [--repeat 20]

1. Creates its own database (`--database`, default `aigw_bench_usage`: dropped and re-created;
   no other database is touched), migrates it (controlplane/migrate.py).
2. Seeds with COPY: 3 parents, ~1,000 sub-accounts (skewed traffic: a few heavy customers, a
   long tail), 20 models, tags (`tenant:<n>` plus 0-2 feature/env tags), 90 UTC days up to now,
   BYOK requests (one parent's openai traffic), 2% failed requests, some parent-own traffic.
   Then the daily roll-up `usage_daily`, computed from those rows by the ingester's own grouping.
3. Starts the real control plane (`python -m controlplane`: uvicorn on a free port, against
   that database and Redis `--redis-url`), and times each query of `queries()` `--repeat` times
   over HTTP (httpx, one request at a time, after one unrecorded warm-up call).
4. Prints a Markdown table of p50/p99 (ms) and writes it to `bench/results/usage.md`.

The database stays after the run (`--drop` drops it) so queries can be re-timed with `--reuse`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import yaml

from aigw.embedded import free_port
from aigw.keys import generate_key, hash_key
from bench.stats import percentile
from controlplane import store
from controlplane.accounts import create_parent_account
from controlplane.migrate import migrate

DAYS = 90
PARENTS = (("acme", 800, 0.80), ("globex", 150, 0.15), ("initech", 50, 0.05))
FEATURE_TAGS = ("feature:chat", "feature:search", "feature:summarize", "env=prod", "env=staging")
MODELS = [  # (model, provider, input, output: nano-cents per token)
    (f"{provider}/{name}", provider, price_in, price_out)
    for provider, name, price_in, price_out in [
        ("openai", "gpt-5.4-mini", 25_000, 200_000),
        ("openai", "gpt-5.4", 125_000, 1_000_000),
        ("openai", "gpt-4.1", 200_000, 800_000),
        ("openai", "gpt-4.1-mini", 40_000, 160_000),
        ("openai", "gpt-4.1-nano", 10_000, 40_000),
        ("openai", "o4-mini", 110_000, 440_000),
        ("openai", "text-embedding-3-small", 2_000, 0),
        ("anthropic", "claude-haiku-4.5", 100_000, 500_000),
        ("anthropic", "claude-sonnet-4.5", 300_000, 1_500_000),
        ("anthropic", "claude-opus-4.1", 1_500_000, 7_500_000),
        ("google", "gemini-2.5-flash", 30_000, 250_000),
        ("google", "gemini-2.5-pro", 125_000, 1_000_000),
        ("google", "gemini-2.5-flash-lite", 10_000, 40_000),
        ("meta", "llama-4-scout", 10_000, 30_000),
        ("meta", "llama-4-maverick", 20_000, 60_000),
        ("mistral", "mistral-large", 200_000, 600_000),
        ("mistral", "mistral-small", 10_000, 30_000),
        ("deepseek", "deepseek-v3", 27_000, 110_000),
        ("xai", "grok-4", 300_000, 1_500_000),
        ("xai", "grok-4-fast", 20_000, 50_000),
    ]
]
_COLUMNS = (
    "request_id", "parent_id", "sub_account_id", "tags", "model", "provider", "endpoint",
    "status", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "cost_microcents", "fee_microcents", "byok", "stream", "aborted", "latency_ms", "started_at",
    "finished_at", "period",
)  # fmt: skip
_ROLL_UP = """
INSERT INTO usage_daily (day, parent_id, sub_account_id, model, tags, requests, failed_requests,
    input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost_microcents,
    fee_microcents, byok_requests, byok_cost_microcents)
SELECT (finished_at AT TIME ZONE 'UTC')::date, parent_id, sub_account_id, model, tags,
       count(*), count(*) FILTER (WHERE status >= 400 OR status = 0),
       sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), sum(output_tokens),
       sum(cost_microcents), sum(fee_microcents), count(*) FILTER (WHERE byok),
       coalesce(sum(cost_microcents) FILTER (WHERE byok), 0)
FROM usage_ledger GROUP BY 1, 2, 3, 4, 5 ORDER BY 1
"""


def with_path(url: str, path: str) -> str:
    """The same server, another database (PostgreSQL) or database number (Redis)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{path}"))


def ledger_rows(
    count: int, parents: list[tuple[str, list[tuple[str, str]], float]], now: datetime
) -> Iterator[tuple[Any, ...]]:
    """`count` realistic ledger rows in the order the ingester writes them (by time), tags
    distinct and sorted as the gateway settles them."""
    rng = random.Random(42)
    first = now - timedelta(days=DAYS)
    span_s = (now - first).total_seconds()
    parent_weights = [share for _, _, share in parents]
    weights = {parent_id: [rng.paretovariate(1.2) for _ in subs] for parent_id, subs, _ in parents}
    model_weights = [1 / (rank + 1) for rank in range(len(MODELS))]
    for offset in sorted(rng.random() for _ in range(count)):
        parent_id, subs, _ = rng.choices(parents, parent_weights)[0]
        if rng.random() < 0.02:
            sub_id, tags = None, set()
        else:
            sub_id, default_tag = rng.choices(subs, weights[parent_id])[0]
            tags = {default_tag} | set(rng.sample(FEATURE_TAGS, rng.choice((0, 0, 1, 1, 2))))
        model, provider, price_in, price_out = rng.choices(MODELS, model_weights)[0]
        finished = first + timedelta(seconds=offset * span_s)
        latency_ms = int(rng.lognormvariate(6.5, 0.8))
        status = 200 if rng.random() < 0.98 else rng.choice((429, 500, 0))
        tokens_in = int(rng.lognormvariate(6.5, 1.2)) if status == 200 else 0
        tokens_out = int(rng.lognormvariate(5.0, 1.0)) if status == 200 and price_out else 0
        cost = -(-(tokens_in * price_in + tokens_out * price_out) // 1000)
        byok = parent_id == parents[1][0] and provider == "openai"
        fee = 0 if byok else -(-cost * 5 // 100)
        yield (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)), parent_id, sub_id,
            sorted(tags), model, provider, "/v1/chat/completions", status, tokens_in, 0, 0,
            tokens_out, cost, fee, byok, rng.random() < 0.4, False, latency_ms,
            finished - timedelta(milliseconds=latency_ms), finished, finished.strftime("%Y-%m"),
        )  # fmt: skip


async def seed(dsn: str, redis_url: str, rows: int, now: datetime) -> None:
    """Migrate, seed parents, sub-accounts, the ledger and its roll-up."""
    await migrate(dsn)
    parents = []
    for name, sub_count, share in PARENTS:
        parent_id, _ = await create_parent_account(dsn, name, redis_url)
        subs = [(f"sa_{uuid.uuid4().hex[:24]}", f"tenant:{name}-{n}") for n in range(sub_count)]
        parents.append((parent_id, subs, share))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "sub_accounts",
            records=[
                (sub_id, parent_id, tag.removeprefix("tenant:"), tag, now, now)
                for parent_id, subs, _ in parents
                for sub_id, tag in subs
            ],
            columns=["id", "parent_id", "name", "default_tag", "created_at", "updated_at"],
        )
        started = time.monotonic()
        await conn.copy_records_to_table(
            "usage_ledger", records=ledger_rows(rows, parents, now), columns=_COLUMNS
        )
        print(f"ledger: {rows:,} rows in {time.monotonic() - started:.0f} s", file=sys.stderr)
        await conn.execute(_ROLL_UP)
        await conn.execute("VACUUM ANALYZE usage_ledger")
        await conn.execute("VACUUM ANALYZE usage_daily")
        daily = await conn.fetchval("SELECT count(*) FROM usage_daily")
        print(f"usage_daily: {daily:,} rows", file=sys.stderr)
    finally:
        await conn.close()


async def reset_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def prepare_run(dsn: str) -> tuple[str, datetime, dict[str, str]]:
    """A fresh key of the big parent (never written anywhere), the seed's "now" (its newest
    request), and ids the queries need: the busiest sub-account and a cursor 10,000 rows deep."""
    conn = await asyncpg.connect(dsn)
    try:
        parent_id = await conn.fetchval("SELECT id FROM parent_accounts WHERE name = 'acme'")
        key = generate_key()
        await store.insert_key(conn, hash_key(key), parent_id, None, datetime.now(UTC))
        newest = await conn.fetchval("SELECT max(finished_at) FROM usage_ledger")
        busiest = await conn.fetchval(
            "SELECT sub_account_id FROM usage_daily WHERE parent_id = $1 AND sub_account_id"
            " IS NOT NULL GROUP BY 1 ORDER BY sum(requests) DESC LIMIT 1",
            parent_id,
        )
        deep = await conn.fetchval(
            "SELECT request_id FROM usage_ledger WHERE parent_id = $1"
            " ORDER BY finished_at DESC, request_id OFFSET 10000 LIMIT 1",
            parent_id,
        )
    finally:
        await conn.close()
    return key, newest, {"busiest": busiest, "deep": deep}


def queries(now: datetime, ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    today = now.date()
    last_month = (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    week_ago = (now - timedelta(days=7)).isoformat()
    d30 = (today - timedelta(days=30)).isoformat()
    return [
        ("usage: total, all time", "/v1/usage", {}),
        ("usage: by day, all time", "/v1/usage", {"group_by": "day"}),
        ("usage: by model, 30 days", "/v1/usage", {"group_by": "model", "start": d30}),
        ("usage: by sub-account, 30 days", "/v1/usage",
         {"group_by": "sub_account_id", "start": d30}),
        ("usage: by tag, 30 days", "/v1/usage", {"group_by": "tag", "start": d30}),
        ("usage: one sub-account by day,model", "/v1/usage",
         {"group_by": "day,model", "sub_account_id": ids["busiest"]}),
        ("usage: tag filter by day", "/v1/usage", {"group_by": "day", "tag": "feature:search"}),
        ("usage: rare model by sub-account", "/v1/usage",
         {"group_by": "sub_account_id", "model": MODELS[-1][0]}),
        ("usage: exact times (7 d) by day", "/v1/usage",
         {"group_by": "day", "start": week_ago, "end": now.isoformat()}),
        ("usage: all 4 dims, 7 days, CSV", "/v1/usage",
         {"group_by": "day,sub_account_id,tag,model", "start": week_ago[:10], "format": "csv"}),
        ("requests: first page (100)", "/v1/requests", {"limit": 100}),
        ("requests: page after 10,000 rows", "/v1/requests", {"limit": 100, "after": ids["deep"]}),
        ("requests: tag filter, first page", "/v1/requests", {"limit": 100, "tag": "env=staging"}),
        ("requests: rare model, first page", "/v1/requests",
         {"limit": 100, "model": MODELS[-1][0]}),
        ("requests: one sub-account", "/v1/requests",
         {"limit": 100, "sub_account_id": ids["busiest"]}),
        ("billing statement, last month", "/v1/billing/statement", {"month": last_month}),
    ]  # fmt: skip


def time_queries(base_url: str, key: str, plan: list[tuple[str, str, dict[str, Any]]],
                 repeat: int) -> list[tuple[str, float, float, int]]:  # fmt: skip
    """(name, p50 ms, p99 ms, response bytes) per query."""
    results = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        for name, path, params in plan:
            client.get(path, params=params).raise_for_status()
            samples = []
            size = 0
            for _ in range(repeat):
                started = time.perf_counter()
                response = client.get(path, params=params)
                samples.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                size = len(response.content)
            results.append((name, percentile(samples, 50), percentile(samples, 99), size))
    return results


def start_controlplane(folder: Path, dsn: str, redis_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = {"server": {"controlplane_port": port}, "database_url": dsn, "redis_url": redis_url}
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = (folder / "controlplane.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "--config", str(folder / "gateway.yaml")],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/openapi.json", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"the control plane did not start (see {folder / 'controlplane.log'})")


def table(rows: int, daily: int, results: list[tuple[str, float, float, int]], repeat: int) -> str:
    lines = [
        f"`GET` over HTTP, {rows:,} ledger rows ({daily:,} `usage_daily` rows), {repeat} runs each",
        "",
        "| query | p50 ms | p99 ms | response bytes |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {p50:.1f} | {p99:.1f} | {size:,} |" for name, p50, p99, size in results]
    return "\n".join(lines) + "\n"


async def counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        ledger = await conn.fetchval("SELECT count(*) FROM usage_ledger")
        daily = await conn.fetchval("SELECT count(*) FROM usage_daily")
    finally:
        await conn.close()
    return int(ledger), int(daily)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed_usage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    default_redis = with_path(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), "15")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=default_dsn, help="the PostgreSQL server")
    parser.add_argument("--database", default="aigw_bench_usage")
    parser.add_argument("--redis-url", default=default_redis)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="time the existing seeded database")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    args = parser.parse_args(argv)
    dsn = with_path(args.database_url, args.database)
    if not args.reuse:
        asyncio.run(reset_database(args.database_url, args.database))
        asyncio.run(seed(dsn, args.redis_url, args.rows, datetime.now(UTC)))
    ledger, daily = asyncio.run(counts(dsn))
    key, now, ids = asyncio.run(prepare_run(dsn))
    folder = Path(__file__).with_name("results")
    folder.mkdir(exist_ok=True)
    process, url = start_controlplane(folder, dsn, args.redis_url)
    try:
        results = time_queries(url, key, queries(now, ids), args.repeat)
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = table(ledger, daily, results, args.repeat)
    (folder / "usage.md").write_text(report)
    print(report)
    if args.drop:
        asyncio.run(drop_database(args.database_url, args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main())
