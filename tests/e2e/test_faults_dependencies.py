"""Faults of the gateway's stores, injected for real on a gateway of this module's own: its Redis
server stopped, frozen, or restarted empty; its PostgreSQL cut off behind a TCP proxy. Each test
asserts what a client sees and that nothing paid for or metered is lost (docs/faults.md)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.conftest import Parent
from tests.e2e.harness import eventually
from tests.faults import FaultGateway, fault_fixtures

PRICEY = "openai/gpt-test-pricey"  # input $10 / output $100 per million tokens (test config)
CHEAP = "openai/gpt-5.4-mini"
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
FULL_OUTPUT = {"x-mock-chunks": "1000"}  # the mock writes until max_tokens
CLIENT_TIMEOUT_S = 10.0  # a request that is not answered within this counts as a hang


fault_database, gateway, parent = fault_fixtures("deps")


def chat(gateway: FaultGateway, key: str, model: str = CHEAP, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}", **FULL_OUTPUT},
        json={"model": model, "messages": MESSAGES, "max_tokens": 20, **body},
        timeout=CLIENT_TIMEOUT_S,
    )


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("gateway_unavailable", "api_error")
    assert response.headers["x-aig-request-id"]


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text


def extproc_logs(gateway: FaultGateway) -> str:
    """What the extproc workers logged: the operator's explanation of a 503."""
    folder = Path(gateway.gateway.config["data_dir"]) / "logs"
    return "".join(path.read_text() for path in folder.glob("extproc-*.log"))


def answers_200(gateway: FaultGateway, key: str) -> bool:
    return chat(gateway, key).status_code == 200


async def ledger(database_url: str, sub_account_id: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(
            "SELECT request_id, cost_microcents + fee_microcents AS total FROM usage_ledger"
            " WHERE sub_account_id = $1",
            sub_account_id,
        )
    finally:
        await connection.close()


async def wait_for_ledger(database_url: str, sub_account_id: str, count: int) -> list[Any]:
    rows: list[Any] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = await ledger(database_url, sub_account_id)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"the ledger has {len(rows)} of {count} rows after 15 s")


def test_redis_down_fails_closed_at_once_and_recovers_by_itself(
    gateway: FaultGateway, parent: Parent
) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    assert_ok(chat(gateway, account["key"]))
    assert_ok(chat(gateway, parent.key))

    gateway.redis.stop()
    try:
        for key in (account["key"], parent.key, account["key"]):
            assert_unavailable(chat(gateway, key))
    finally:
        gateway.redis.start()
    assert "Redis failed, requests refused with 503" in extproc_logs(gateway)

    assert eventually(lambda: answers_200(gateway, account["key"]), timeout=15)
    assert answers_200(gateway, parent.key)
    created_after = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    assert eventually(lambda: answers_200(gateway, created_after["key"]), timeout=2)


def test_a_frozen_redis_is_a_503_within_a_short_timeout_not_a_hang(
    gateway: FaultGateway, parent: Parent
) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    assert eventually(lambda: answers_200(gateway, account["key"]), timeout=2)

    gateway.redis.pause()  # connections open, nothing ever answers
    try:
        for key in (account["key"], parent.key):
            assert_unavailable(chat(gateway, key))  # within CLIENT_TIMEOUT_S, or httpx raises
    finally:
        gateway.redis.resume()

    assert eventually(lambda: answers_200(gateway, account["key"]), timeout=15)


async def test_redis_restarted_empty_rebuilds_policies_and_spend_before_admitting(
    gateway: FaultGateway, parent: Parent
) -> None:
    cap_cents = 25
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=cap_cents)
    for _ in range(3):
        assert_ok(chat(gateway, account["key"], PRICEY, max_tokens=50))
    await wait_for_ledger(gateway.database_url, account["id"], 3)
    spent_before = parent.call("GET", f"/sub-accounts/{account['id']}").json()["spend"]
    assert spent_before["spent_cents"] > 0

    gateway.redis.restart_empty()

    statuses = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        response = chat(gateway, account["key"], PRICEY, max_tokens=50)
        statuses.append(response.status_code)
        if response.status_code != 503:
            break
        assert_unavailable(response)
        await asyncio.sleep(0.05)
    assert statuses[-1] == 200, statuses
    spend = parent.call("GET", f"/sub-accounts/{account['id']}").json()["spend"]
    assert spend["spent_cents"] > spent_before["spent_cents"]  # the old spend still counts

    served = 3 + 1  # before the restart, and the first one after it
    refused = chat(gateway, account["key"], PRICEY, max_tokens=50)
    while refused.status_code == 200 and served < 60:
        served += 1
        refused = chat(gateway, account["key"], PRICEY, max_tokens=50)
    assert refused.status_code == 402, refused.text
    rows = await wait_for_ledger(gateway.database_url, account["id"], served)
    assert len(rows) == served
    assert sum(row["total"] for row in rows) <= cap_cents * 1_000_000  # no overage, ledger-true


async def test_postgresql_down_keeps_the_data_plane_serving_and_loses_no_usage(
    gateway: FaultGateway, parent: Parent
) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    assert_ok(chat(gateway, account["key"]))
    await wait_for_ledger(gateway.database_url, account["id"], 1)

    gateway.postgres.stop()
    try:
        responses = [chat(gateway, key) for key in (account["key"], parent.key) * 5]
        assert [r.status_code for r in responses] == [200] * 10
        listing = parent.call("GET", "/sub-accounts", timeout=CLIENT_TIMEOUT_S)
        assert listing.status_code == 503, listing.text  # no database: a retryable 503
        assert listing.json()["error"]["code"] == "gateway_unavailable"
        assert len(await ledger(gateway.database_url, account["id"])) == 1
    finally:
        gateway.postgres.start()

    served_ids = {r.headers["x-aig-request-id"] for r in responses[::2]}
    rows = await wait_for_ledger(gateway.database_url, account["id"], 6)
    ids = [row["request_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 6  # nothing doubled
    assert served_ids <= set(ids)  # nothing lost
    assert eventually(lambda: healthy_listing(parent), timeout=15)


def healthy_listing(parent: Parent) -> bool:
    return parent.call("GET", "/sub-accounts", timeout=CLIENT_TIMEOUT_S).status_code == 200
