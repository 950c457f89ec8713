"""Faults of the gateway's own processes, injected for real: an extproc worker SIGKILLed while
streams run through it, and the whole `aigw up` stopped with SIGTERM under load. Each test asserts
what the clients saw and that nothing metered is lost or doubled (docs/faults.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime

import asyncpg
import httpx
import psutil
import pytest
import redis.asyncio as aioredis

from aigw.supervisor import EXTPROC_RESTART_MIN_UPTIME_S
from tests.e2e.conftest import Parent
from tests.e2e.harness import eventually, start_gateway
from tests.faults import FaultGateway, fault_fixtures

MODEL = "openai/gpt-5.4-mini"
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
LONG_STREAM = {"x-mock-chunks": "150", "x-mock-chunk-delay-ms": "20"}  # about 3 s per stream
CLIENT_TIMEOUT_S = 30.0  # a stream that neither ends nor fails within this counts as a hang


fault_database, gateway, parent = fault_fixtures("procs")


def extproc_workers(gateway: FaultGateway) -> list[psutil.Process]:
    supervisor = psutil.Process(gateway.gateway.process.pid)
    return [
        child
        for child in supervisor.children(recursive=True)
        if "extproc" in child.cmdline() and child.is_running()
    ]


def serving_streams(worker: psutil.Process, port: int) -> bool:
    """Whether Envoy holds a gRPC connection to this worker."""
    return any(
        c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in worker.net_connections(kind="tcp")
    )


async def stream(http: httpx.AsyncClient, url: str, key: str, started: asyncio.Event) -> str:
    """'done' when the stream ended with [DONE], else the error the client got."""
    headers = {"Authorization": f"Bearer {key}", **LONG_STREAM}
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 150, "stream": True}
    try:
        async with http.stream("POST", url, headers=headers, json=body) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                started.set()
                if line == "data: [DONE]":
                    return "done"
        return "cut short"
    except httpx.TransportError as exc:
        return type(exc).__name__


async def spend(gateway: FaultGateway, sub_account_id: str) -> tuple[int, int]:
    """(spent, reserved) micro-cents of this month, as admission sees them."""
    from aigw.periods import current_period
    from extproc.limits import LimitStore

    client = aioredis.from_url(gateway.redis.url)
    try:
        period = current_period("monthly", datetime(2020, 1, 1, tzinfo=UTC), datetime.now(UTC))
        return await LimitStore(client).read_spend(sub_account_id, period.id)
    finally:
        await client.aclose()


async def test_a_killed_extproc_cuts_its_streams_cleanly_and_the_rest_go_on(
    gateway: FaultGateway, parent: Parent
) -> None:
    cap_cents = 10
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=cap_cents)
    url = f"{gateway.base_url}/chat/completions"
    port = gateway.gateway.config["server"]["extproc_port"]
    workers = extproc_workers(gateway)
    assert len(workers) == 2
    # Old enough to be restarted rather than taken for a crash loop. psutil's create_time is
    # derived from the boot time and can read up to a second early: wait that much longer.
    youngest = max(worker.create_time() for worker in workers)
    await asyncio.sleep(max(0.0, youngest + EXTPROC_RESTART_MIN_UPTIME_S + 1.0 - time.time()))

    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:
        started = [asyncio.Event() for _ in range(6)]
        streams = [
            asyncio.create_task(stream(http, url, account["key"], event)) for event in started
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 15)
        victim = next(worker for worker in workers if serving_streams(worker, port))
        victim.send_signal(signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*streams), CLIENT_TIMEOUT_S)

        cut = [outcome for outcome in outcomes if outcome != "done"]
        assert cut, "no stream ran through the killed worker"
        assert set(cut) <= {"RemoteProtocolError", "ReadError", "cut short"}, outcomes

        after = await http.post(
            url,
            headers={"Authorization": f"Bearer {account['key']}"},
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 10},
        )
        assert after.status_code == 200, after.text

    assert gateway.gateway.process.poll() is None, "aigw up stopped with the worker"
    assert eventually(lambda: len(extproc_workers(gateway)) == 2, timeout=10)
    spent, reserved = await spend(gateway, account["id"])
    assert reserved > 0  # the killed streams' reservations stay until they expire ...
    assert spent + reserved <= cap_cents * 1_000_000  # ... and never let the cap be passed


@pytest.mark.parametrize("target", ["aigw up", "envoy"])
async def test_sigterm_under_load_settles_in_flight_requests_and_loses_no_usage(
    gateway: FaultGateway, parent: Parent, target: str
) -> None:
    """SIGTERM to `aigw up` (a clean stop: exit 0) or to its Envoy alone (the supervisor then
    stops everything: exit 1); then a restart on the same stores."""
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=1000)
    up = gateway.gateway
    victim = up.process.pid if target == "aigw up" else envoy_of(gateway).pid
    url = f"{gateway.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {account['key']}", "x-mock-delay-ms": "300"}
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10}

    async def client(http: httpx.AsyncClient, stop: asyncio.Event) -> list[httpx.Response | str]:
        outcomes: list[httpx.Response | str] = []
        while not stop.is_set():
            try:
                outcomes.append(await http.post(url, headers=headers, json=body))
            except httpx.TransportError as exc:
                outcomes.append(type(exc).__name__)
                break
        return outcomes

    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:
        clients = [asyncio.create_task(client(http, stop)) for _ in range(8)]
        await asyncio.sleep(1.5)  # the load is running
        os.kill(victim, signal.SIGTERM)
        exit_code = await asyncio.to_thread(up.process.wait, 60)
        stop.set()
        outcomes = [o for result in await asyncio.gather(*clients) for o in result]

    assert exit_code == (0 if target == "aigw up" else 1), up.output()[-3000:]
    responses = [o for o in outcomes if isinstance(o, httpx.Response)]
    served = {r.headers["x-aig-request-id"] for r in responses if r.status_code == 200}
    assert served
    failures = [o for o in outcomes if not isinstance(o, httpx.Response)]
    assert set(failures) <= {"ConnectError", "RemoteProtocolError", "ReadError"}, failures
    other = {r.status_code for r in responses} - {200}
    assert other <= {503}, [r.text for r in responses if r.status_code != 200]

    restarted = start_gateway(up.config_path, up.config, "--extproc-workers", "2")
    gateway.gateway = restarted
    ledger = await wait_for_ledger(gateway.database_url, account["id"], served)
    counts = await ledger_counts(gateway.database_url, account["id"])
    assert served <= set(ledger)  # every 200 the clients got is billed ...
    assert set(counts.values()) == {1}  # ... exactly once
    _, reserved = await spend(gateway, account["id"])
    assert reserved == 0  # every request cut by the stop was settled: no budget held


def envoy_of(gateway: FaultGateway) -> psutil.Process:
    supervisor = psutil.Process(gateway.gateway.process.pid)
    return next(c for c in supervisor.children() if "--config-path" in c.cmdline())


async def wait_for_ledger(database_url: str, sub_account_id: str, ids: set[str]) -> list[str]:
    deadline = time.monotonic() + 20
    found: list[str] = []
    while time.monotonic() < deadline:
        found = list(await ledger_counts(database_url, sub_account_id))
        if ids <= set(found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(ids - set(found))} served requests never reached the ledger")


async def ledger_counts(database_url: str, sub_account_id: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT request_id, count(*) AS n FROM usage_ledger WHERE sub_account_id = $1"
            " GROUP BY request_id",
            sub_account_id,
        )
    finally:
        await connection.close()
    return {row["request_id"]: row["n"] for row in rows}
