"""Webhooks through the real gateway: what extproc, the ingester and the dispatcher of `aigw up`
do together reaches a real HTTP receiver, signed per Standard Webhooks — every event type, the
budget events once per period with 50 concurrent requests crossing the thresholds together,
only to the parent concerned, and again under the same id after a failed attempt."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.e2e.conftest import E2E, Parent
from tests.webhook_receiver import Receiver, until

PRICEY = "openai/gpt-test-pricey"  # input $10 / output $100 per million tokens (test config)
USE_FULL_OUTPUT = {"x-mock-chunks": "1000"}  # the mock then writes until max_tokens
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
ARRIVAL_S = 20.0  # usage is ingested within 5 s; delivery follows at once


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as value:
        yield value


def register(parent: Parent, url: str, events: list[str] | None = None) -> dict[str, Any]:
    response = parent.call("POST", "/webhooks", json={"url": url, "events": events or ["*"]})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _stream(client: openai.AsyncOpenAI) -> str:
    """About 10.5 cents, reserving about 11.7 (the input bound is the body's bytes + 1024)."""
    stream = await client.chat.completions.create(
        model=PRICEY, messages=MESSAGES, max_tokens=1000, stream=True,
        extra_headers=USE_FULL_OUTPUT,
    )  # fmt: skip
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])


async def _fail_once(e2e: E2E, key: str) -> str:
    """A request the provider answers 500; returns its request id."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{e2e.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}", "x-mock-status": "500"},
            json={"model": "openai/gpt-5.4-mini", "messages": MESSAGES, "max_tokens": 5},
        )
    assert response.status_code == 500, response.text
    return response.headers["x-aig-request-id"]


async def test_every_event_type_arrives_signed(
    e2e: E2E, parent: Parent, receiver: Receiver
) -> None:
    hook = register(parent, receiver.url("/all"))
    models = {"allowed_models": ["openai/*"], "default_tag": "tenant:42"}
    # 50 concurrent requests: about 8 fit the cap at once and cross 80 % when they settle; the
    # others meet a full budget (402, which fires "exhausted")
    capped = parent.create_sub_account(name="customer_42", spend_cap_cents=100, **models)
    limited = parent.create_sub_account(name="limited", rate_limit_rpm=1, **models)
    failing = parent.create_sub_account(name="failing", **models)

    client = openai.AsyncOpenAI(base_url=e2e.base_url, api_key=capped["key"], max_retries=0)
    async with client:
        results = await asyncio.gather(
            *(_stream(client) for _ in range(50)), return_exceptions=True
        )
    assert any(isinstance(r, str) for r in results), results[:3]
    assert {r.status_code for r in results if isinstance(r, openai.APIStatusError)} == {402}

    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "openai/gpt-5.4-mini", "messages": MESSAGES, "max_tokens": 5}
        headers = {"Authorization": f"Bearer {limited['key']}"}
        statuses = [
            (
                await http.post(f"{e2e.base_url}/chat/completions", headers=headers, json=body)
            ).status_code
            for _ in range(4)
        ]
    assert statuses == [200, 429, 429, 429]
    request_id = await _fail_once(e2e, failing["key"])
    test = parent.call("POST", f"/webhooks/{hook['id']}/test")
    assert test.status_code == 202

    expected = {
        ("sub_account.created", capped["id"]),
        ("sub_account.created", limited["id"]),
        ("sub_account.created", failing["id"]),
        ("sub_account.budget.warning", capped["id"]),
        ("sub_account.budget.exhausted", capped["id"]),
        ("sub_account.rate_limited", limited["id"]),
        ("sub_account.request.failed", failing["id"]),
        ("webhook.test", None),
    }

    def arrived() -> set[tuple[str, str | None]]:
        return {
            (r.event["type"], r.event["data"].get("sub_account_id"))
            for r in receiver.delivered("/all")
        }

    assert await until(lambda: arrived() >= expected, within=ARRIVAL_S), arrived()
    await asyncio.sleep(1.5)  # nothing more is coming
    events = [post.verified(hook["secret"]) for post in receiver.received("/all")]
    assert Counter((e["type"], e["data"].get("sub_account_id")) for e in events) == Counter(
        expected
    )  # each exactly once
    by_type = {(e["type"], e["data"].get("sub_account_id")): e for e in events}
    warning = by_type[("sub_account.budget.warning", capped["id"])]["data"]
    assert (warning["name"], warning["default_tag"], warning["threshold"]) == (
        "customer_42", "tenant:42", 80,
    )  # fmt: skip
    exhausted = by_type[("sub_account.budget.exhausted", capped["id"])]["data"]
    assert exhausted["threshold"] == 100 and exhausted["spend_cap_cents"] == 100
    assert by_type[("sub_account.rate_limited", limited["id"])]["data"]["limit"] == "rpm"
    failure = by_type[("sub_account.request.failed", failing["id"])]["data"]
    assert (failure["status"], failure["request_id"], failure["name"]) == (
        500, request_id, "failing",
    )  # fmt: skip
    created = by_type[("sub_account.created", capped["id"])]["data"]
    assert created["spend_cap_cents"] == 100 and created["default_tag"] == "tenant:42"
    assert by_type[("webhook.test", None)]["data"]["webhook_id"] == hook["id"]

    conn = await asyncpg.connect(e2e.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT secret FROM webhook_endpoints WHERE id = $1", hook["id"]
        )
    finally:
        await conn.close()
    assert stored.startswith("v1:") and hook["secret"][6:] not in stored  # sealed at rest


async def test_parents_only_receive_their_own_events(
    e2e: E2E, parent: Parent, other_parent: Parent, receiver: Receiver
) -> None:
    mine = register(parent, receiver.url("/acme"))
    theirs = register(other_parent, receiver.url("/globex"))
    acme = parent.create_sub_account(allowed_models=["openai/*"])
    globex = other_parent.create_sub_account(allowed_models=["openai/*"])
    await _fail_once(e2e, acme["key"])
    await _fail_once(e2e, globex["key"])

    assert await until(lambda: len(receiver.delivered("/acme")) >= 2, within=ARRIVAL_S)
    assert await until(lambda: len(receiver.delivered("/globex")) >= 2, within=ARRIVAL_S)
    await asyncio.sleep(1.0)
    for path, hook, sub in (("/acme", mine, acme), ("/globex", theirs, globex)):
        posts = receiver.received(path)
        assert {p.verified(hook["secret"])["data"]["sub_account_id"] for p in posts} == {sub["id"]}
        assert len(posts) == 2
    assert other_parent.call("GET", f"/webhooks/{mine['id']}/deliveries").status_code == 404


async def test_a_failed_attempt_is_retried_under_the_same_id(
    e2e: E2E, parent: Parent, receiver: Receiver
) -> None:
    hook = register(parent, receiver.url("/flaky"), ["sub_account.created"])
    receiver.behave("/flaky", fail_first=1, fail_status=503)
    sent = parent.call("POST", f"/webhooks/{hook['id']}/test").json()

    # the first retry comes 5 s (± 20 %) after the first attempt
    assert await until(lambda: len(receiver.delivered("/flaky")) == 1, within=15)
    posts = receiver.received("/flaky")
    assert [p.status for p in posts] == [503, 204]
    assert {p.id for p in posts} == {sent["id"]}
    assert all(p.verified(hook["secret"])["type"] == "webhook.test" for p in posts)
    assert 3.9 <= posts[1].at - posts[0].at <= 8

    log = parent.call("GET", f"/webhooks/{hook['id']}/deliveries").json()
    assert [(d["attempt"], d["status_code"], d["outcome"]) for d in log["data"]] == [
        (2, 204, "delivered"), (1, 503, "retrying"),
    ]  # fmt: skip
