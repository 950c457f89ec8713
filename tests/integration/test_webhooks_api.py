"""The webhook routes (API.md §6) against real PostgreSQL and Redis: create (secret once, sealed
at rest), list, get, delete, validation naming the field, isolation between parents, the test
event and the paginated delivery log."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from aigw.config import parse_config
from controlplane import webhooks
from controlplane.accounts import create_parent_account
from controlplane.app import create_app
from controlplane.dispatcher import Dispatcher
from controlplane.webhook_secrets import secret_box
from tests.integration.webhook_helpers import FAST, running
from tests.webhook_receiver import Receiver, until

CONFIG = parse_config(f"secrets_key: {base64.b64encode(os.urandom(32)).decode()}\n")


def with_webhooks(app: FastAPI) -> FastAPI:
    """The app as wired by the lead (`app.include_router(webhooks.router)`), also before."""
    if not any(getattr(route, "path", "") == "/v1/webhooks" for route in app.routes):
        app.include_router(webhooks.router)
    return app


@dataclass
class Plane:
    client: httpx.AsyncClient
    dsn: str
    key: str
    other_key: str

    async def call(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("events", ["*"])
        response = await self.call("POST", "/v1/webhooks", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture
async def plane(pg_dsn: str, redis_url: str) -> AsyncIterator[Plane]:
    _, key = await create_parent_account(pg_dsn, "acme", redis_url)
    _, other_key = await create_parent_account(pg_dsn, "globex", redis_url)
    app = with_webhooks(create_app(CONFIG, pg_dsn, redis_url, ingest=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Plane(client, pg_dsn, key, other_key)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as value:
        yield value


def error_of(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


async def test_create_shows_the_secret_once_and_stores_it_sealed(plane: Plane) -> None:
    created = await plane.create(
        url="https://hooks.example.com/aigw?tenant=1",
        events=["sub_account.budget.exhausted", "sub_account.budget.warning"],
        description="billing alerts",
    )
    assert created["id"].startswith("wh_")
    assert created["object"] == "webhook_endpoint"
    assert created["events"] == ["sub_account.budget.exhausted", "sub_account.budget.warning"]
    assert created["description"] == "billing alerts"
    assert created["created_at"].endswith("Z")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24

    listed = (await plane.call("GET", "/v1/webhooks")).json()
    assert listed["object"] == "list" and listed["has_more"] is False
    expected = {k: v for k, v in created.items() if k != "secret"}
    assert listed["data"] == [expected]
    one = await plane.call("GET", f"/v1/webhooks/{created['id']}")
    assert one.json() == expected

    conn = await asyncpg.connect(plane.dsn)
    try:
        stored = await conn.fetchval("SELECT secret FROM webhook_endpoints")
    finally:
        await conn.close()
    assert secret not in stored and secret[6:] not in stored and stored.startswith("v1:")


async def test_star_and_repeated_events_are_normalised(plane: Plane) -> None:
    both = await plane.create(url="http://127.0.0.1:9/x", events=["sub_account.created", "*"])
    assert both["events"] == ["*"]
    twice = await plane.create(
        url="http://127.0.0.1:9/x", events=["sub_account.created", "sub_account.created"]
    )
    assert twice["events"] == ["sub_account.created"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url", "http"),
        ({"url": "https://user:pw@example.com/x", "events": ["*"]}, "url", "credentials"),
        ({"url": "https://example.com/" + "a" * 2100, "events": ["*"]}, "url", "2048"),
        ({"url": "https:///nohost", "events": ["*"]}, "url", "host"),
        ({"url": "https://exa mple.com/", "events": ["*"]}, "url", "whitespace"),
        ({"url": "/relative", "events": ["*"]}, "url", "http"),
        ({"url": "https://example.com/", "events": ["sub_account.deleted"]}, "events.0", "unknown"),
        ({"url": "https://example.com/", "events": ["*", "nope"]}, "events.1", "unknown"),
        ({"url": "https://example.com/", "events": []}, "events", "at least 1"),
        ({"url": "https://example.com/"}, "events", "required"),
        ({"events": ["*"]}, "url", "required"),
        ({"url": "https://example.com/", "events": ["*"], "secret": "x"}, "secret", "unknown"),
    ],
)
async def test_invalid_input_names_the_field(
    plane: Plane, body: dict[str, Any], param: str, words: str
) -> None:
    response = await plane.call("POST", "/v1/webhooks", json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param
    assert error["message"].startswith(param) and words in error["message"]


async def test_another_parents_endpoint_is_not_found(plane: Plane) -> None:
    theirs = await plane.create(url="https://example.com/hook")
    path = f"/v1/webhooks/{theirs['id']}"
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/deliveries"), ("POST", "/test")):
        response = await plane.call(method, path + suffix, key=plane.other_key)
        assert response.status_code == 404, (method, suffix, response.text)
        assert error_of(response)["code"] == "not_found"
    assert (await plane.call("GET", "/v1/webhooks", key=plane.other_key)).json()["data"] == []
    assert (await plane.call("GET", path)).status_code == 200  # still there for its owner


async def test_delete_removes_the_endpoint(plane: Plane) -> None:
    created = await plane.create(url="https://example.com/hook")
    response = await plane.call("DELETE", f"/v1/webhooks/{created['id']}")
    assert response.json() == {"id": created["id"], "object": "webhook_endpoint", "deleted": True}
    assert (await plane.call("GET", f"/v1/webhooks/{created['id']}")).status_code == 404
    assert (await plane.call("DELETE", f"/v1/webhooks/{created['id']}")).status_code == 404
    assert (await plane.call("GET", "/v1/webhooks")).json()["data"] == []
    assert (await plane.call("GET", "/v1/webhooks/wh_%00bad")).status_code == 404


async def test_list_is_paginated(plane: Plane) -> None:
    ids = [(await plane.create(url=f"https://example.com/{n}"))["id"] for n in range(3)]
    first = (await plane.call("GET", "/v1/webhooks", params={"limit": 2})).json()
    assert [e["id"] for e in first["data"]] == ids[:2] and first["has_more"] is True
    rest = (await plane.call("GET", "/v1/webhooks", params={"limit": 2, "after": ids[1]})).json()
    assert [e["id"] for e in rest["data"]] == ids[2:] and rest["has_more"] is False
    bad = await plane.call("GET", "/v1/webhooks", params={"after": "wh_nope"})
    assert bad.status_code == 400 and error_of(bad)["param"] == "after"


async def test_a_sub_account_key_cannot_manage_webhooks(plane: Plane) -> None:
    response = await plane.call("POST", "/v1/sub-accounts", json={"name": "c"})
    sub_key = response.json()["key"]
    assert (await plane.call("GET", "/v1/webhooks", key=sub_key)).status_code == 401


async def test_the_test_event_is_signed_and_logged(plane: Plane, receiver: Receiver) -> None:
    created = await plane.create(url=receiver.url("/hook"), events=["sub_account.rate_limited"])
    receiver.behave("/hook", fail_first=1)
    sent = await plane.call("POST", f"/v1/webhooks/{created['id']}/test")
    assert sent.status_code == 202
    assert sent.json()["type"] == "webhook.test" and sent.json()["webhook_id"] == created["id"]

    pool = await asyncpg.create_pool(plane.dsn, min_size=1, max_size=2)
    dispatcher = Dispatcher(pool, secret_box(CONFIG), dsn=plane.dsn, settings=FAST)
    try:
        async with running(dispatcher):
            assert await until(lambda: len(receiver.delivered("/hook")) == 1)
    finally:
        await pool.close()
    posts = receiver.received("/hook")
    event = posts[-1].verified(created["secret"])
    assert event["type"] == "webhook.test"
    assert event["data"]["webhook_id"] == created["id"]
    assert {post.id for post in posts} == {sent.json()["id"]}

    path = f"/v1/webhooks/{created['id']}/deliveries"
    log = (await plane.call("GET", path)).json()
    assert log["object"] == "list" and log["has_more"] is False
    assert [(d["attempt"], d["status_code"], d["outcome"]) for d in log["data"]] == [
        (2, 204, "delivered"), (1, 500, "retrying"),
    ]  # fmt: skip
    newest = log["data"][0]
    assert newest["event_id"] == sent.json()["id"] and newest["type"] == "webhook.test"
    assert newest["object"] == "webhook_delivery" and newest["error"] is None
    assert log["data"][1]["error"] == "HTTP 500"
    page = (await plane.call("GET", path, params={"limit": 1})).json()
    assert page["has_more"] is True and page["data"] == log["data"][:1]
    rest = (await plane.call("GET", path, params={"limit": 1, "after": newest["id"]})).json()
    assert rest["data"] == log["data"][1:] and rest["has_more"] is False
