"""Spend caps through the real gateway (two extproc processes behind one Envoy): no overage under
concurrent streaming, also when clients hang up mid-stream; clamping; the 402 an SDK sees;
spend that survives a Redis flush; caps changed by PATCH."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import eventually

PRICEY = "openai/gpt-test-pricey"  # input $10 / output $100 per million tokens (test config)
USE_FULL_OUTPUT = {"x-mock-chunks": "1000"}  # the mock then writes until max_tokens
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def spend_of(parent: Parent, sub_account_id: str) -> dict[str, Any]:
    response = parent.call("GET", f"/sub-accounts/{sub_account_id}")
    assert response.status_code == 200, response.text
    return dict(response.json()["spend"])


async def reserved_of(e2e: E2E, sub_account_id: str) -> int:
    from aigw.periods import current_period
    from extproc.limits import LimitStore

    client = aioredis.from_url(e2e.redis_url)
    try:
        period = current_period("monthly", _created(), _now())
        _, reserved = await LimitStore(client).read_spend(sub_account_id, period.id)
    finally:
        await client.aclose()
    return reserved


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _created() -> Any:
    from datetime import UTC, datetime

    return datetime(2020, 1, 1, tzinfo=UTC)


async def _stream_to_the_end(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(
        model=PRICEY,
        messages=MESSAGES,
        max_tokens=100,
        stream=True,
        extra_headers=USE_FULL_OUTPUT,
    )
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])


async def test_no_overage_with_100_concurrent_streams(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=25)
    client = openai.AsyncOpenAI(base_url=e2e.base_url, api_key=account["key"], max_retries=0)
    async with client:
        results = await asyncio.gather(
            *(_stream_to_the_end(client) for _ in range(100)), return_exceptions=True
        )

    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    served = [r for r in results if isinstance(r, str)]
    assert len(served) + len(refused) == 100, [r for r in results if isinstance(r, Exception)]
    assert served and refused
    assert {error.status_code for error in refused} == {402}
    assert all(error.code == "budget_exhausted" for error in refused)

    assert eventually(lambda: spend_of(parent, account["id"])["spent_cents"] > 0, timeout=5)
    spend = spend_of(parent, account["id"])
    assert Decimal(str(spend["spent_cents"])) <= 25
    assert await reserved_of(e2e, account["id"]) == 0


async def test_no_overage_when_clients_hang_up_mid_stream(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=25)
    headers = {"Authorization": f"Bearer {account['key']}", **USE_FULL_OUTPUT}
    body = {"model": PRICEY, "messages": MESSAGES, "max_tokens": 100, "stream": True}

    async def hang_up(http: httpx.AsyncClient) -> int:
        async with http.stream(
            "POST", f"{e2e.base_url}/chat/completions", headers=headers, json=body
        ) as response:
            if response.status_code == 200:
                async for _ in response.aiter_bytes():
                    break  # first bytes, then the client goes away
            return response.status_code

    async with httpx.AsyncClient(timeout=30) as http:
        statuses = await asyncio.gather(*(hang_up(http) for _ in range(60)))

    assert set(statuses) <= {200, 402}
    assert 200 in statuses

    async def settled() -> bool:
        return await reserved_of(e2e, account["id"]) == 0

    for _ in range(300):
        if await settled():
            break
        await asyncio.sleep(0.05)
    assert await settled(), "reservations of cut-off streams were not released in 15 s"
    assert Decimal(str(spend_of(parent, account["id"])["spent_cents"])) <= 25


def test_max_tokens_clamped_to_what_the_budget_pays_for(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=5)
    e2e.mock.clear()

    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {account['key']}"},
        json={"model": PRICEY, "messages": MESSAGES, "max_tokens": 700},
    )

    assert response.status_code == 200, response.text
    clamped = int(response.headers["x-aig-max-tokens-clamped"])
    assert 16 <= clamped < 700
    assert e2e.mock.last_request()["body"]["max_tokens"] == clamped


def test_402_as_the_openai_sdk_sees_it(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=0)

    with pytest.raises(openai.APIStatusError) as raised:
        e2e.openai(account["key"]).chat.completions.create(model=PRICEY, messages=MESSAGES)

    error = raised.value
    assert error.status_code == 402
    assert error.code == "budget_exhausted"
    body = error.body
    assert isinstance(body, dict)
    assert body["sub_account_id"] == account["id"]
    assert body["spend_cap_cents"] == 0
    assert body["spent_cents"] == 0
    assert body["resets_at"].endswith("Z")
    assert error.response.headers["x-aig-request-id"]


def test_raising_and_lowering_the_cap_takes_effect(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=0)
    url = f"{e2e.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {account['key']}"}
    body = {"model": PRICEY, "messages": MESSAGES, "max_tokens": 20}

    assert httpx.post(url, headers=headers, json=body).status_code == 402
    parent.call("PATCH", f"/sub-accounts/{account['id']}", json={"spend_cap_cents": 100})
    assert eventually(lambda: httpx.post(url, headers=headers, json=body).status_code == 200)
    parent.call("PATCH", f"/sub-accounts/{account['id']}", json={"spend_cap_cents": 0})
    assert eventually(lambda: httpx.post(url, headers=headers, json=body).status_code == 402)


def test_usage_is_metered_and_the_usage_chunk_hidden(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    client = e2e.openai(account["key"])

    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-5.4-mini", messages=MESSAGES, max_tokens=10, stream=True
        )
    )

    assert all(chunk.choices for chunk in chunks), "the gateway's own usage chunk leaked"
    assert e2e.mock.last_request()["body"]["stream_options"] == {"include_usage": True}
    with_usage = list(
        client.chat.completions.create(
            model="openai/gpt-5.4-mini",
            messages=MESSAGES,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == 10
    assert eventually(lambda: spend_of(parent, account["id"])["spent_cents"] > 0, timeout=5)


async def test_spend_is_rebuilt_after_redis_is_flushed(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=25)
    url = f"{e2e.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {account['key']}", **USE_FULL_OUTPUT}
    body = {"model": PRICEY, "messages": MESSAGES, "max_tokens": 50}
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(3):
            assert (await http.post(url, headers=headers, json=body)).status_code == 200
        await _wait_for_ledger_rows(e2e, account["id"], 3)
        before = spend_of(parent, account["id"])["spent_cents"]
        assert before > 0

        flusher = aioredis.from_url(e2e.redis_url)
        await flusher.flushdb()
        await flusher.aclose()

        statuses = []
        for _ in range(100):
            response = await http.post(url, headers=headers, json=body)
            statuses.append(response.status_code)
            if response.status_code != 503:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}
        assert spend_of(parent, account["id"])["spent_cents"] > before

        while (await http.post(url, headers=headers, json=body)).status_code == 200:
            pass
    assert Decimal(str(spend_of(parent, account["id"])["spent_cents"])) <= 25


async def _wait_for_ledger_rows(e2e: E2E, sub_account_id: str, count: int) -> None:
    import asyncpg

    connection = await asyncpg.connect(e2e.database_url)
    try:
        for _ in range(100):
            rows = await connection.fetchval(
                "SELECT count(*) FROM usage_ledger WHERE sub_account_id = $1", sub_account_id
            )
            if rows >= count:
                return
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    raise AssertionError(f"the ledger did not get {count} rows for {sub_account_id} in 5 s")
