"""The control-plane benchmark (`python -m bench controlplane`).

1. `aigw up` on fresh backends (providers point nowhere: no data-plane traffic), one parent.
2. Seed N existing sub-accounts through the API (default 2,000; the documented large run is
   `--seed 100000`), so that creation is measured on a non-empty database and Redis.
3. `POST /v1/sub-accounts` with wrk (every body unique, through Envoy as users call it):
   rate and p50/p99 (targets: >= 500/s and p99 <= 20 ms), CPU per creation by process.
4. The usage ingester: XADD usage events in the format of docs/internals.md ("Usage
   streams", to the sub-account's shard) to the gateway's Redis and watch `usage_ledger` fill:
   - burst: N events at once; throughput = N / (last row's `ingested_at` - first XADD);
   - steady: R events/s for S s; lag = `ingested_at` - the event's `finished_at` (set at XADD),
     p50/p99/max. `ingested_at` is the ingesting transaction's `now()` (its start).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from aigw import keyspace
from aigw.redis_client import SyncRedis
from aigw.redis_client import connect_sync as connect_redis
from bench.dataplane import log
from bench.gateway import Backends, Gateway, start_gateway
from bench.procs import BenchError, CpuSnapshot, free_port
from bench.profile import MISSING, SAMPLE_RATE, Recording, py_spy, summarize
from bench.report import profile_section
from bench.stats import percentile
from bench.targets import RequestSpec
from bench.wrk import WrkMissing, run_wrk, write_script, wrk_path

INGEST_TIMEOUT_S = 300.0
XADD_BATCH = 500
_CREATE_BODY = {
    "name": "customer",
    "spend_cap_cents": 500,
    "budget_period": "monthly",
    "rate_limit_rpm": 60,
    "allowed_models": ["openai/gpt-5.4-mini", "google/gemini-*-flash*"],
    "default_tag": "tenant:seed",
    "metadata": {"plan": "free"},
}
_UNIQUE_NAMES = r"""
local counter = 0
request = function()
  counter = counter + 1
  local body = string.gsub(wrk.body, '"name":"customer"', '"name":"customer-' .. counter .. '"')
  return wrk.format(nil, nil, nil, body)
end
"""


@dataclass(frozen=True)
class ControlPlaneSettings:
    backends: Backends
    work: Path
    seed: int = 2000
    duration_s: int = 10
    connections: int = 8
    burst_events: int = 20_000
    steady_rate: int = 1000
    steady_s: int = 10
    profile_s: int = 0  # > 0: py-spy the control plane under POST /v1/sub-accounts that long
    smoke: bool = False


def run_controlplane(settings: ControlPlaneSettings) -> dict[str, Any]:
    settings.work.mkdir(parents=True, exist_ok=True)
    nowhere = f"http://127.0.0.1:{free_port()}"
    log("starting aigw up (control plane bench)")
    gateway = start_gateway(settings.work, settings.backends, nowhere, nowhere)
    try:
        log(f"seeding {settings.seed:,} sub-accounts through the API")
        seed = asyncio.run(_seed(gateway, settings.seed))
        log(f"seeded at {seed['per_s']:,.0f}/s; vacuum and checkpoint")
        asyncio.run(_at_rest(gateway))
        log("measuring POST /v1/sub-accounts")
        create = _create(gateway, settings)
        log(f"POST /v1/sub-accounts: {create['rps']:,.0f}/s, p99 {create['p99_us'] / 1000:.1f} ms")
        profile = _profile(gateway, settings) if settings.profile_s else None
        burst = asyncio.run(_ingest_burst(gateway, settings))
        log(f"ingester, burst: {burst['events_per_s']:,.0f} events/s")
        steady = asyncio.run(_ingest_steady(gateway, settings))
        log(f"ingester, steady {settings.steady_rate}/s: lag p99 {steady['lag_p99_ms']:.0f} ms")
    finally:
        gateway.supervisor.process.send_signal(signal.SIGINT)
        gateway.supervisor.process.wait(timeout=60)
        settings.backends.drop()
    valid = create["valid"] and burst["complete"] and steady["complete"]
    return {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "smoke": settings.smoke,
            "seed": settings.seed,
            "duration_s": settings.duration_s,
            "connections": settings.connections,
        },
        "seed": seed,
        "create": create,
        "ingest_burst": burst,
        "ingest_steady": steady,
        "profile": profile,
        "valid": valid,
        "targets": {"create_per_s": 500, "create_p99_ms": 20},
    }


async def _seed(gateway: Gateway, count: int, concurrency: int = 16) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {gateway.parent_key}"}
    numbers = iter(range(count))
    failures = 0
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=60) as client:

        async def worker() -> None:
            nonlocal failures
            for number in numbers:
                body = {**_CREATE_BODY, "name": f"seed-{number}", "default_tag": f"t:{number}"}
                reply = await client.post("/v1/sub-accounts", json=body)
                failures += reply.status_code != 201

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{failures} of {count} seed creations failed")
    return {"count": count, "seconds": elapsed, "per_s": count / elapsed if elapsed else 0.0}


async def _at_rest(gateway: Gateway) -> None:
    """The seeded database as a long-running one would be: vacuumed, analysed and
    checkpointed, so the autovacuum and the checkpoint that a burst of seeding sets off do not
    fall into the measurement."""
    connection = await asyncpg.connect(gateway.backends.database_url)
    try:
        await connection.execute("VACUUM (ANALYZE) sub_accounts, api_keys, events")
        await connection.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError as exc:
        log(f"the database is not checkpointed ({exc}); measuring anyway")
    finally:
        await connection.close()


def _create(gateway: Gateway, settings: ControlPlaneSettings) -> dict[str, Any]:
    spec = RequestSpec(
        f"{gateway.url}/v1/sub-accounts",
        orjson.dumps(_CREATE_BODY),
        {"Content-Type": "application/json", "Authorization": f"Bearer {gateway.parent_key}"},
    )
    script = write_script(spec, settings.work / "create.lua", _UNIQUE_NAMES)
    groups = gateway.cpu_groups()
    groups.pop("extproc", None)
    before = CpuSnapshot.take(groups)
    result = run_wrk(spec.url, script, settings.connections, settings.duration_s)
    cpu = CpuSnapshot.take(groups).seconds_since(before)
    per = {g: s * 1e6 / result.requests if result.requests else None for g, s in cpu.items()}
    return {**result.as_dict(), "cpu_us_per_request": per}


def _profile(gateway: Gateway, settings: ControlPlaneSettings) -> dict[str, Any]:
    """py-spy on the control plane while wrk creates sub-accounts for `profile_s` seconds."""
    tool = py_spy()
    if tool is None:
        return {"skipped": MISSING}
    seconds = settings.profile_s
    recording = Recording(tool, gateway.processes()["controlplane"], seconds, settings.work, "cp")
    load = run_wrk(f"{gateway.url}/v1/sub-accounts", settings.work / "create.lua",
                   settings.connections, seconds)  # fmt: skip
    summary = summarize(recording.collapsed())
    return {
        "rate_hz": SAMPLE_RATE,
        "seconds": seconds,
        "create": {"rps": load.rps, "requests": load.requests, **summary},
    }


def _usage_event(request_id: str, gateway: Gateway, now_ms: int, period: str) -> bytes:
    return orjson.dumps(
        {
            "type": "usage",
            "request_id": request_id,
            "parent_id": gateway.parent_id,
            "sub_account_id": gateway.sub_account_id,
            "tags": ["tenant:bench"],
            "model": "openai/gpt-5.4-mini",
            "provider": "openai",
            "endpoint": "/v1/chat/completions",
            "status": 200,
            "input_tokens": 26,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 24,
            "cost_microcents": 5450,
            "fee_microcents": 273,
            "byok": False,
            "stream": False,
            "aborted": False,
            "latency_ms": 2,
            "started_at": now_ms - 2,
            "finished_at": now_ms,
            "period": period,
            "crossed": [],
        }
    )


def _xadd(client: SyncRedis, gateway: Gateway, prefix: str, first: int, count: int) -> None:
    now_ms = int(time.time() * 1000)
    period = datetime.now(UTC).strftime("%Y-%m")
    stream = keyspace.owner_usage_stream(gateway.sub_account_id)
    pipe = client.pipeline(transaction=False)
    for number in range(first, first + count):
        event = _usage_event(f"{prefix}-{number}", gateway, now_ms, period)
        pipe.xadd(stream, {"e": event})
    pipe.execute()


async def _wait_for_rows(gateway: Gateway, prefix: str, count: int) -> dict[str, Any]:
    """Poll the ledger until `count` rows of `prefix` are in; their lag figures."""
    connection = await asyncpg.connect(gateway.backends.database_url)
    try:
        deadline = time.monotonic() + INGEST_TIMEOUT_S
        rows = 0
        while time.monotonic() < deadline:
            rows = await connection.fetchval(
                "SELECT count(*) FROM usage_ledger WHERE request_id LIKE $1", f"{prefix}-%"
            )
            if rows >= count:
                break
            await asyncio.sleep(0.05)
        lags = await connection.fetch(
            "SELECT extract(epoch FROM ingested_at - finished_at) * 1000 AS lag_ms,"
            " extract(epoch FROM ingested_at) AS at FROM usage_ledger WHERE request_id LIKE $1",
            f"{prefix}-%",
        )
    finally:
        await connection.close()
    lag = [float(r["lag_ms"]) for r in lags]
    return {
        "rows": rows,
        "complete": rows >= count,
        "last_ingested_at": max((float(r["at"]) for r in lags), default=0.0),
        "lag_p50_ms": percentile(lag, 50),
        "lag_p99_ms": percentile(lag, 99),
        "lag_max_ms": max(lag, default=0.0),
    }


async def _ingest_burst(gateway: Gateway, settings: ControlPlaneSettings) -> dict[str, Any]:
    client = connect_redis(settings.backends.redis_url)
    count = settings.burst_events
    groups = _ingest_groups(gateway)
    before = CpuSnapshot.take(groups)
    started = time.time()
    for first in range(0, count, XADD_BATCH):
        _xadd(client, gateway, "burst", first, min(XADD_BATCH, count - first))
    added = time.time()
    rows = await _wait_for_rows(gateway, "burst", count)
    cpu = CpuSnapshot.take(groups).seconds_since(before)
    seconds = rows["last_ingested_at"] - started
    return {
        "events": count,
        "xadd_seconds": added - started,
        "seconds": seconds,
        "events_per_s": count / seconds if seconds > 0 else 0.0,
        **rows,
        "cpu_us_per_event": {g: s * 1e6 / count for g, s in cpu.items()},
    }


async def _ingest_steady(gateway: Gateway, settings: ControlPlaneSettings) -> dict[str, Any]:
    client = connect_redis(settings.backends.redis_url)
    tick_s = 0.01
    per_tick = max(1, round(settings.steady_rate * tick_s))
    ticks = round(settings.steady_s / tick_s)
    groups = _ingest_groups(gateway)
    before = CpuSnapshot.take(groups)
    started = time.monotonic()
    for tick in range(ticks):
        _xadd(client, gateway, "steady", tick * per_tick, per_tick)
        await asyncio.sleep(max(0.0, started + (tick + 1) * tick_s - time.monotonic()))
    count = ticks * per_tick
    rows = await _wait_for_rows(gateway, "steady", count)
    cpu = CpuSnapshot.take(groups).seconds_since(before)
    return {
        "rate_per_s": per_tick / tick_s,
        "events": count,
        **rows,
        "cpu_us_per_event": {g: s * 1e6 / count for g, s in cpu.items()},
    }


def _ingest_groups(gateway: Gateway) -> dict[str, list[int]]:
    groups = gateway.cpu_groups()
    return {g: groups[g] for g in ("controlplane", "postgres", "redis")}


def markdown(result: dict[str, Any]) -> str:
    create, burst, steady, seed = (
        result["create"],
        result["ingest_burst"],
        result["ingest_steady"],
        result["seed"],
    )
    ok_rate = create["rps"] >= 500
    ok_p99 = create["p99_us"] <= 20_000
    cpu = ", ".join(f"{g} {v:,.0f}" for g, v in create["cpu_us_per_request"].items() if v)
    lines = [
        f"# aigw control-plane benchmark — {result['meta']['started_at']}",
        "",
        "**Valid run.**" if result["valid"] else "**INVALID RUN** (errors or missing rows).",
        "",
        f"Seeded {seed['count']:,} sub-accounts through the API at {seed['per_s']:,.0f}/s.",
        "",
        "| measurement | result | target |",
        "|---|---|---|",
        f"| POST /v1/sub-accounts, {result['meta']['connections']} connections | "
        f"{create['rps']:,.0f}/s | >= 500/s {'met' if ok_rate else 'MISSED'} |",
        f"| its p50 / p99 | {create['p50_us'] / 1000:.1f} / {create['p99_us'] / 1000:.1f} ms | "
        f"p99 <= 20 ms {'met' if ok_p99 else 'MISSED'} |",
        f"| CPU µs per creation | {cpu} | |",
        f"| ingester, burst of {burst['events']:,} events | {burst['events_per_s']:,.0f} events/s "
        f"(drained in {burst['seconds']:.2f} s) | |",
        f"| ingester, steady {steady['rate_per_s']:,.0f} events/s: lag p50 / p99 / max | "
        f"{steady['lag_p50_ms']:.0f} / {steady['lag_p99_ms']:.0f} / {steady['lag_max_ms']:.0f} ms"
        " | |",
        "| ingester CPU µs per event (burst) | "
        + ", ".join(f"{g} {v:,.0f}" for g, v in burst["cpu_us_per_event"].items())
        + " | |",
    ]
    if result.get("profile"):
        lines += ["", *profile_section(result["profile"], "control plane", ("create",))]
    return "\n".join(lines) + "\n"


def main_controlplane(argv: list[str]) -> int:
    from bench.run import backend_arguments, finish

    parser = argparse.ArgumentParser(prog="python -m bench controlplane", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, small numbers")
    parser.add_argument("--seed", type=int, default=2000, help="existing sub-accounts first")
    parser.add_argument("--duration", type=int, default=10, metavar="S")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--events", type=int, default=20_000, help="usage events in the burst")
    parser.add_argument("--rate", type=int, default=1000, help="events/s of the steady phase")
    parser.add_argument("--steady", type=int, default=10, metavar="S")
    parser.add_argument("--profile", type=int, default=0, metavar="S",
                        help="py-spy the control plane under creation load for S s")  # fmt: skip
    backend_arguments(parser, "aigw_bench")
    args = parser.parse_args(argv)
    stem = f"controlplane-{time.strftime('%Y%m%d-%H%M%S')}" + ("-smoke" if args.smoke else "")
    small = args.smoke
    settings = ControlPlaneSettings(
        backends=Backends(args.postgres, args.database, args.redis_url),
        work=args.results / f"{stem}-work",
        seed=100 if small else args.seed,
        duration_s=1 if small else args.duration,
        connections=args.connections,
        burst_events=1000 if small else args.events,
        steady_rate=200 if small else args.rate,
        steady_s=1 if small else args.steady,
        profile_s=0 if small else args.profile,
        smoke=small,
    )
    try:
        wrk_path()
        result = run_controlplane(settings)
    except (WrkMissing, BenchError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return finish(result, args.results, stem, markdown(result))
