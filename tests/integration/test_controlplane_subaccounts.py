"""The control plane's REST API against real PostgreSQL and Redis: sub-accounts, validation,
pagination, isolation, authentication, /v1/me, /v1/tiers and the service routes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from aigw.config import parse_config
from aigw.keys import hash_key
from controlplane.accounts import create_parent_account
from controlplane.app import create_app
from controlplane.clock import Clock, utc_now

CONFIG = parse_config(
    """
tiers:
  free: {spend_cap_cents: 500, rate_limit_rpm: 60, byok: false,
         allowed_models: ["openai/gpt-5.4-mini", "google/gemini-*-flash*"]}
  pro: {spend_cap_cents: 10000, budget_period: weekly, rate_limit_rpm: 600}
"""
)


@dataclass
class Plane:
    client: httpx.AsyncClient
    dsn: str
    redis_url: str
    parent_id: str
    parent_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.parent_key}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.headers)
        return await self.client.request(method, path, **kwargs)

    async def create(self, **fields: Any) -> dict[str, Any]:
        response = await self.call("POST", "/v1/sub-accounts", json={"name": "c", **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())


async def start(pg_dsn: str, redis_url: str, clock: Clock = utc_now) -> AsyncIterator[Plane]:
    parent_id, key = await create_parent_account(pg_dsn, "acme", redis_url)
    app = create_app(CONFIG, pg_dsn, redis_url, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Plane(client, pg_dsn, redis_url, parent_id, key)


@pytest.fixture
async def plane(pg_dsn: str, redis_url: str) -> AsyncIterator[Plane]:
    async for running_plane in start(pg_dsn, redis_url):
        yield running_plane


DEEP: dict[str, Any] = {}
for _ in range(12):
    DEEP = {"k": DEEP}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code", "param"} <= set(body["error"])
    return dict(body["error"])


# Create


async def test_create_takes_tier_defaults_and_explicit_fields_win(plane: Plane) -> None:
    created = await plane.create(
        name="customer_42",
        tier="free",
        spend_cap_cents=5000,
        rate_limit_rpm=None,
        default_tag="tenant:42",
        metadata={"plan": "free"},
    )
    assert created["object"] == "sub_account"
    assert re.fullmatch(r"sa_[0-9a-f]{24}", created["id"])
    assert created["tier"] == "free"
    assert created["spend_cap_cents"] == 5000  # explicit wins
    assert created["rate_limit_rpm"] is None  # explicit null wins over the tier's 60
    assert created["allowed_models"] == ["openai/gpt-5.4-mini", "google/gemini-*-flash*"]
    assert created["byok"] is False
    assert created["budget_period"] == "monthly"
    assert created["default_tag"] == "tenant:42"
    assert created["metadata"] == {"plan": "free"}
    assert created["status"] == "active"
    assert created["expires_at"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created["created_at"])
    assert created["spend"]["spent_cents"] == 0
    assert created["spend"]["remaining_cents"] == 5000


async def test_create_with_only_a_name_has_builtin_defaults(plane: Plane) -> None:
    created = await plane.create(name="bare")
    assert created["tier"] is None
    assert created["spend_cap_cents"] is None
    assert created["allowed_models"] == ["*"]
    assert created["byok"] is True
    assert created["metadata"] == {}
    assert created["spend"]["remaining_cents"] is None


async def test_tier_values_fill_every_field_not_given(plane: Plane) -> None:
    created = await plane.create(tier="pro", expires_at="2030-01-02T03:04:05+01:00")
    assert created["spend_cap_cents"] == 10000
    assert created["budget_period"] == "weekly"
    assert created["rate_limit_rpm"] == 600
    assert created["allowed_models"] == ["*"]
    assert created["expires_at"] == "2030-01-02T02:04:05Z"


async def test_the_key_is_shown_once_and_only_its_hash_is_stored(plane: Plane) -> None:
    created = await plane.create()
    key = created["key"]
    assert re.fullmatch(r"sk-aig-[A-Za-z0-9_-]{32,}", key)
    fetched = (await plane.call("GET", f"/v1/sub-accounts/{created['id']}")).json()
    assert "key" not in fetched
    listed = (await plane.call("GET", "/v1/sub-accounts")).json()
    assert all("key" not in row for row in listed["data"])

    conn = await asyncpg.connect(plane.dsn)
    try:
        stored = await conn.fetch(
            "SELECT key_hash FROM api_keys WHERE sub_account_id = $1", created["id"]
        )
        dump = await conn.fetchval(
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM api_keys) t"
        )
        dump += await conn.fetchval(
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM sub_accounts) t"
        )
    finally:
        await conn.close()
    assert [row["key_hash"] for row in stored] == [hash_key(key)]
    assert key not in dump and key.removeprefix("sk-aig-") not in dump


# Validation


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"name": "a", "tier": "gold"}, "tier", "unknown tier 'gold'"),
        ({"name": "a", "spend_cap_cents": -1}, "spend_cap_cents", "greater than or equal to 0"),
        ({"name": "a", "budget_period": "yearly"}, "budget_period", "'monthly'"),
        ({"name": "a", "colour": "red"}, "colour", "unknown field"),
        ({}, "name", "Field required"),
        ({"name": None}, "name", "must not be null"),
        ({"name": ""}, "name", "at least 1 character"),
        ({"name": "a", "spend_cap_cents": "5"}, "spend_cap_cents", "valid integer"),
        ({"name": "a", "spend_cap_cents": True}, "spend_cap_cents", "valid integer"),
        ({"name": "a", "spend_cap_cents": 2**70}, "spend_cap_cents", "less than or equal"),
        ({"name": "a", "rate_limit_rpm": 0}, "rate_limit_rpm", "greater than or equal to 1"),
        ({"name": "a", "allowed_models": "openai/*"}, "allowed_models", "valid list"),
        ({"name": "a", "allowed_models": [1]}, "allowed_models.0", "valid string"),
        ({"name": "a", "metadata": [1]}, "metadata", "valid dictionary"),
        ({"name": "a", "metadata": {str(i): i for i in range(51)}}, "metadata", "50 keys"),
        ({"name": "a", "metadata": {"k": "v" * 20000}}, "metadata", "bytes"),
        ({"name": "a", "metadata": {"k": "a\x00b"}}, "metadata", "NUL"),
        ({"name": "a", "metadata": {"n": 2**70}}, "metadata", "64 bits"),
        ({"name": "a", "metadata": DEEP}, "metadata", "levels deep"),
        ({"name": "a\x00"}, "name", "NUL"),
        ({"name": "a", "default_tag": "x" * 201}, "default_tag", "at most 200"),
        ({"name": "a", "byok": "yes"}, "byok", "valid boolean"),
        ({"name": "a", "expires_at": "tomorrow"}, "expires_at", "datetime"),
        ({"name": "a", "expires_at": "9999-12-31T23:59:59-23:59"}, "expires_at", "9998"),
        ({"name": "a", "expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at", "1970"),
    ],
)
async def test_invalid_fields_answer_400_naming_the_field(
    plane: Plane, body: dict[str, Any], param: str, fragment: str
) -> None:
    response = await plane.call("POST", "/v1/sub-accounts", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"name": "a",', "application/json"),
        (b"\xff\xfe\x00{", "application/json"),
        (b'{"name": "a\\ud800"}', "application/json"),
        (b"[1, 2]", "application/json"),
        (b"", "application/json"),
        (b'{"name": "a"}', "text/plain"),
        (b"null", "application/json"),
        (b'{"name": "a", "spend_cap_cents": 1e400}', "application/json"),
        (b'{"name": "a", "metadata": {"x": NaN}}', "application/json"),
        (b"[" * 100_000, "application/json"),
    ],
)
async def test_unreadable_bodies_answer_400_never_500(
    plane: Plane, content: bytes, content_type: str
) -> None:
    headers = {**plane.headers, "content-type": content_type}
    response = await plane.call("POST", "/v1/sub-accounts", content=content, headers=headers)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


async def test_bad_json_says_so(plane: Plane) -> None:
    headers = {**plane.headers, "content-type": "application/json"}
    response = await plane.call("POST", "/v1/sub-accounts", content=b"{oops", headers=headers)
    assert "not valid JSON" in error_of(response)["message"]


# List


async def test_list_pages_with_a_cursor_in_creation_order(plane: Plane) -> None:
    ids = [(await plane.create(name=f"c{i}"))["id"] for i in range(5)]
    first = (await plane.call("GET", "/v1/sub-accounts", params={"limit": 2})).json()
    assert first["object"] == "list"
    assert [row["id"] for row in first["data"]] == ids[:2]
    assert first["has_more"] is True
    second = (
        await plane.call("GET", "/v1/sub-accounts", params={"limit": 2, "after": ids[1]})
    ).json()
    assert [row["id"] for row in second["data"]] == ids[2:4]
    last = (
        await plane.call("GET", "/v1/sub-accounts", params={"limit": 2, "after": ids[3]})
    ).json()
    assert [row["id"] for row in last["data"]] == ids[4:]
    assert last["has_more"] is False
    everything = (await plane.call("GET", "/v1/sub-accounts")).json()
    assert [row["id"] for row in everything["data"]] == ids
    assert everything["has_more"] is False


async def test_list_filters_by_tag_and_status(plane: Plane) -> None:
    a = await plane.create(default_tag="tenant:1")
    b = await plane.create(default_tag="tenant:2")
    c = await plane.create(default_tag="tenant:1")
    await plane.call("DELETE", f"/v1/sub-accounts/{c['id']}")

    async def ids(**params: str) -> list[str]:
        listed = (await plane.call("GET", "/v1/sub-accounts", params=params)).json()
        return [row["id"] for row in listed["data"]]

    assert await ids(tag="tenant:1") == [a["id"], c["id"]]
    assert await ids(status="active") == [a["id"], b["id"]]
    assert await ids(status="disabled") == [c["id"]]
    assert await ids(tag="tenant:1", status="active") == [a["id"]]
    assert await ids(tag="nobody") == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "99999999999999999999999"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "gone"}, "status"),
        ({"after": "sa_doesnotexist"}, "after"),
        ({"after": "x\x00"}, "after"),
        ({"tag": "a\x00"}, "tag"),
    ],
)
async def test_bad_list_parameters_answer_400(
    plane: Plane, params: dict[str, str], param: str
) -> None:
    response = await plane.call("GET", "/v1/sub-accounts", params=params)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


# Get, patch, delete


async def test_get_answers_the_object_and_unknown_ids_404(plane: Plane) -> None:
    created = await plane.create(name="x")
    fetched = (await plane.call("GET", f"/v1/sub-accounts/{created['id']}")).json()
    assert fetched == {k: v for k, v in created.items() if k != "key"}
    for unknown in ("sa_000000000000000000000000", "acct_1", "%00", "sa_%F0%9F%98%80"):
        response = await plane.call("GET", f"/v1/sub-accounts/{unknown}")
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"


async def test_patch_changes_exactly_the_given_fields(plane: Plane) -> None:
    created = await plane.create(tier="free", default_tag="t", metadata={"a": 1})
    response = await plane.call(
        "PATCH",
        f"/v1/sub-accounts/{created['id']}",
        json={"spend_cap_cents": 900, "default_tag": None, "allowed_models": ["openai/*"]},
    )
    assert response.status_code == 200
    patched = response.json()
    assert patched["spend_cap_cents"] == 900
    assert patched["default_tag"] is None
    assert patched["allowed_models"] == ["openai/*"]
    assert patched["rate_limit_rpm"] == 60
    assert patched["metadata"] == {"a": 1}
    assert patched["spend"]["remaining_cents"] == 900

    unchanged = await plane.call("PATCH", f"/v1/sub-accounts/{created['id']}", json={})
    assert unchanged.json() == patched


async def test_patch_tier_applies_its_defaults_except_fields_given(plane: Plane) -> None:
    created = await plane.create(tier="free")
    patched = (
        await plane.call(
            "PATCH", f"/v1/sub-accounts/{created['id']}", json={"tier": "pro", "rate_limit_rpm": 5}
        )
    ).json()
    assert patched["tier"] == "pro"
    assert patched["spend_cap_cents"] == 10000
    assert patched["budget_period"] == "weekly"
    assert patched["allowed_models"] == ["*"]
    assert patched["byok"] is True
    assert patched["rate_limit_rpm"] == 5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tier": "gold"}, "tier"),
        ({"key": "sk-aig-mine"}, "key"),
        ({"status": "active"}, "status"),
        ({"budget_period": None}, "budget_period"),
        ({"spend_cap_cents": -5}, "spend_cap_cents"),
    ],
)
async def test_patch_validates_like_create(plane: Plane, body: dict[str, Any], param: str) -> None:
    created = await plane.create()
    response = await plane.call("PATCH", f"/v1/sub-accounts/{created['id']}", json=body)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


async def test_delete_disables_and_keeps_the_object(plane: Plane) -> None:
    created = await plane.create()
    deleted = await plane.call("DELETE", f"/v1/sub-accounts/{created['id']}")
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "disabled"
    fetched = (await plane.call("GET", f"/v1/sub-accounts/{created['id']}")).json()
    assert fetched["status"] == "disabled"
    me = await plane.client.get("/v1/me", headers={"x-api-key": created["key"]})
    assert me.status_code == 401
    rotated = await plane.call("POST", f"/v1/sub-accounts/{created['id']}/rotate")
    assert rotated.status_code == 400


async def test_rotate_answers_a_new_key(plane: Plane) -> None:
    created = await plane.create()
    response = await plane.call(
        "POST", f"/v1/sub-accounts/{created['id']}/rotate", json={"grace_seconds": 0}
    )
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["id"] == created["id"]
    assert rotated["key"] != created["key"]
    old = await plane.client.get("/v1/me", headers={"x-api-key": created["key"]})
    assert old.status_code == 401
    new = await plane.client.get("/v1/me", headers={"x-api-key": rotated["key"]})
    assert new.status_code == 200
    for grace in (-1, 7 * 24 * 3600 + 1, "60"):
        bad = await plane.call(
            "POST", f"/v1/sub-accounts/{created['id']}/rotate", json={"grace_seconds": grace}
        )
        assert bad.status_code == 400
        assert error_of(bad)["param"] == "grace_seconds"


async def test_another_parents_objects_answer_404(plane: Plane) -> None:
    created = await plane.create()
    _, other_key = await create_parent_account(plane.dsn, "globex", plane.redis_url)
    other = {"Authorization": f"Bearer {other_key}"}
    url = f"/v1/sub-accounts/{created['id']}"
    assert (await plane.call("GET", url, headers=other)).status_code == 404
    patched = await plane.call("PATCH", url, headers=other, json={"name": "stolen"})
    assert patched.status_code == 404
    assert (await plane.call("DELETE", url, headers=other)).status_code == 404
    assert (await plane.call("POST", f"{url}/rotate", headers=other, json={})).status_code == 404
    listed = (await plane.call("GET", "/v1/sub-accounts", headers=other)).json()
    assert listed["data"] == []
    cursor = await plane.call(
        "GET", "/v1/sub-accounts", headers=other, params={"after": created["id"]}
    )
    assert cursor.status_code == 400
    assert (await plane.call("GET", url)).json()["name"] == "c"


# Authentication, /v1/me, /v1/tiers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-aig-" + "x" * 43},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"x-api-key": ""},
    ],
)
async def test_missing_or_unknown_keys_answer_401(plane: Plane, headers: dict[str, str]) -> None:
    response = await plane.client.get("/v1/sub-accounts", headers=headers)
    assert response.status_code == 401
    error = error_of(response)
    assert (error["code"], error["type"]) == ("invalid_api_key", "authentication_error")


async def test_x_api_key_header_is_accepted(plane: Plane) -> None:
    response = await plane.client.get("/v1/sub-accounts", headers={"x-api-key": plane.parent_key})
    assert response.status_code == 200


async def test_a_sub_account_key_cannot_manage(plane: Plane) -> None:
    created = await plane.create()
    sub = {"Authorization": f"Bearer {created['key']}"}
    for method, path in [
        ("POST", "/v1/sub-accounts"),
        ("GET", "/v1/sub-accounts"),
        ("GET", f"/v1/sub-accounts/{created['id']}"),
        ("GET", "/v1/tiers"),
    ]:
        response = await plane.call(method, path, headers=sub, json={"name": "x"})
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"


async def test_me_with_a_sub_account_key_shows_its_own_budget(plane: Plane) -> None:
    created = await plane.create(spend_cap_cents=1234, default_tag="tenant:7")
    me = (await plane.client.get("/v1/me", headers={"x-api-key": created["key"]})).json()
    assert me["id"] == created["id"]
    assert me["object"] == "sub_account"
    assert "key" not in me
    assert me["spend"]["remaining_cents"] == 1234


async def test_me_with_the_parent_key_is_the_account(plane: Plane) -> None:
    me = (await plane.call("GET", "/v1/me")).json()
    assert me["id"] == plane.parent_id
    assert me["object"] == "account"
    assert me["name"] == "acme"


async def test_an_expired_sub_account_key_is_refused(plane: Plane) -> None:
    created = await plane.create(expires_at="2000-01-01T00:00:00Z")
    me = await plane.client.get("/v1/me", headers={"x-api-key": created["key"]})
    assert me.status_code == 401


async def test_tiers_lists_the_configured_tiers(plane: Plane) -> None:
    tiers = (await plane.call("GET", "/v1/tiers")).json()
    assert tiers["object"] == "list"
    assert [tier["name"] for tier in tiers["data"]] == ["free", "pro"]
    free = tiers["data"][0]
    assert free == {
        "object": "tier",
        "name": "free",
        "spend_cap_cents": 500,
        "budget_period": "monthly",
        "rate_limit_rpm": 60,
        "rate_limit_rpd": None,
        "rate_limit_tpm": None,
        "allowed_models": ["openai/gpt-5.4-mini", "google/gemini-*-flash*"],
        "byok": False,
    }


# Spend periods follow the injected clock


@pytest.mark.parametrize(
    ("period", "period_start", "resets_at"),
    [
        ("monthly", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("weekly", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
        ("daily", "2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z"),
        ("total", "2026-11-27T10:00:00Z", None),
    ],
)
async def test_spend_period_follows_the_clock(
    pg_dsn: str, redis_url: str, period: str, period_start: str, resets_at: str | None
) -> None:
    def clock() -> datetime:
        return datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)

    async for frozen in start(pg_dsn, redis_url, clock):
        created = await frozen.create(budget_period=period, spend_cap_cents=700)
        assert created["created_at"] == "2026-11-27T10:00:00Z"
        assert created["spend"] == {
            "period_start": period_start,
            "resets_at": resets_at,
            "spent_cents": 0,
            "remaining_cents": 700,
        }


# Service routes


async def test_healthz_openapi_docs_and_unknown_urls(plane: Plane) -> None:
    assert (await plane.client.get("/healthz")).json() == {"status": "ok"}
    spec = (await plane.client.get("/v1/openapi.json")).json()
    assert "/v1/sub-accounts" in spec["paths"]
    assert "/v1/sub-accounts/{sub_account_id}/rotate" in spec["paths"]
    assert (await plane.client.get("/docs")).status_code == 200
    unknown = await plane.call("GET", "/v1/nothing-here")
    assert unknown.status_code == 404
    assert error_of(unknown)["code"] == "unknown_url"
    wrong_method = await plane.call("PUT", "/v1/sub-accounts")
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"


async def test_without_redis_the_plane_starts_and_reports_unhealthy(pg_dsn: str) -> None:
    app = create_app(CONFIG, pg_dsn, "redis://127.0.0.1:1/0")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            health = await client.get("/healthz")
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable"}
