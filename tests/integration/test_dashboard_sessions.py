"""Dashboard sign-in against the real control plane app (PostgreSQL, Redis): the session cookie's
attributes, the hashed session row, sign-out, expiry, revoked keys, refused keys, isolation."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from aigw.config import parse_config
from controlplane.accounts import create_parent_account
from controlplane.app import create_app

CONFIG = parse_config("tiers:\n  pro: {spend_cap_cents: 10000}\n")


class MovableClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Dashboard:
    client: httpx.AsyncClient
    dsn: str
    clock: MovableClock
    parent_id: str
    parent_key: str

    async def sign_in(self, key: str | None = None, **headers: str) -> httpx.Response:
        return await self.client.post(
            "/dashboard/login", data={"key": key or self.parent_key}, headers=headers
        )

    async def rows(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch("SELECT * FROM dashboard_sessions"))
        finally:
            await conn.close()


@pytest.fixture
async def dashboard(pg_dsn: str, redis_url: str) -> AsyncIterator[Dashboard]:
    parent_id, key = await create_parent_account(pg_dsn, "acme", redis_url)
    clock = MovableClock()
    app = create_app(CONFIG, pg_dsn, redis_url, clock=clock, ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield Dashboard(client, pg_dsn, clock, parent_id, key)


def cookie_attributes(response: httpx.Response) -> dict[str, str]:
    (header,) = response.headers.get_list("set-cookie")
    parts = [part.strip() for part in header.split(";")]
    attributes = {}
    for part in parts:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return attributes


async def test_sign_in_sets_a_strict_http_only_cookie_and_stores_only_its_hash(
    dashboard: Dashboard,
) -> None:
    response = await dashboard.sign_in()

    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = cookie_attributes(response)
    token = cookie["aigw_session"]
    assert len(token) >= 40 and dashboard.parent_key not in token
    assert "httponly" in cookie and "secure" not in cookie
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/dashboard"
    assert int(cookie["max-age"]) == 12 * 3600

    (row,) = await dashboard.rows()
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["parent_id"] == dashboard.parent_id
    assert row["expires_at"] - row["created_at"] == timedelta(hours=12)
    assert token not in str(dict(row)) and dashboard.parent_key not in str(dict(row))

    page = await dashboard.client.get("/dashboard")
    assert page.status_code == 200
    assert "acme" in page.text and "Spend against caps" in page.text
    assert dashboard.parent_key not in page.text and token not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_the_cookie_is_secure_when_the_page_came_over_https(dashboard: Dashboard) -> None:
    response = await dashboard.sign_in(**{"x-forwarded-proto": "https"})
    assert response.status_code == 303
    assert "secure" in cookie_attributes(response)


async def test_sign_out_deletes_the_session(dashboard: Dashboard) -> None:
    await dashboard.sign_in()
    assert len(await dashboard.rows()) == 1

    response = await dashboard.client.post("/dashboard/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    assert await dashboard.rows() == []
    page = await dashboard.client.get("/dashboard/sub-accounts")
    assert page.status_code == 303
    assert page.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fsub-accounts"


async def test_a_stolen_cookie_is_useless_after_sign_out(dashboard: Dashboard) -> None:
    response = await dashboard.sign_in()
    token = cookie_attributes(response)["aigw_session"]
    await dashboard.client.post("/dashboard/logout")

    dashboard.client.cookies.set("aigw_session", token, domain="cp", path="/dashboard")
    page = await dashboard.client.get("/dashboard")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/dashboard/login")


async def test_an_expired_session_redirects_to_sign_in(dashboard: Dashboard) -> None:
    await dashboard.sign_in()
    dashboard.clock.now += timedelta(hours=11, minutes=59)
    assert (await dashboard.client.get("/dashboard")).status_code == 200

    dashboard.clock.now += timedelta(minutes=2)
    page = await dashboard.client.get("/dashboard/requests?model=openai%2Fgpt-5.4-mini")
    assert page.status_code == 303
    assert page.headers["location"] == (
        "/dashboard/login?next=%2Fdashboard%2Frequests%3Fmodel%3Dopenai%252Fgpt-5.4-mini"
    )


async def test_revoking_the_parent_key_ends_its_sessions(dashboard: Dashboard) -> None:
    await dashboard.sign_in()
    conn = await asyncpg.connect(dashboard.dsn)
    try:
        await conn.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE parent_id = $1 AND sub_account_id IS NULL",
            dashboard.parent_id,
            dashboard.clock.now,
        )
    finally:
        await conn.close()
    page = await dashboard.client.get("/dashboard")
    assert page.status_code == 303


async def test_a_sub_account_key_is_refused_with_a_clear_message(dashboard: Dashboard) -> None:
    created = await dashboard.client.post(
        "/v1/sub-accounts",
        json={"name": "customer_1"},
        headers={"Authorization": f"Bearer {dashboard.parent_key}"},
    )
    sub_key = created.json()["key"]

    response = await dashboard.sign_in(sub_key)

    assert response.status_code == 401
    assert "This is a sub-account key" in response.text
    assert "parent account key" in response.text
    assert sub_key not in response.text
    assert "set-cookie" not in response.headers
    assert await dashboard.rows() == []


@pytest.mark.parametrize("typed", ["sk-aig-" + "x" * 43, "not a key", "", "sk-aig-\u00e9" * 8])
async def test_a_wrong_key_shows_an_error_and_opens_no_session(
    dashboard: Dashboard, typed: str
) -> None:
    response = await dashboard.client.post("/dashboard/login", data={"key": typed})
    assert response.status_code == 401
    assert "That key was not recognised" in response.text
    assert "set-cookie" not in response.headers
    assert await dashboard.rows() == []


async def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(
    dashboard: Dashboard,
) -> None:
    back = await dashboard.client.post(
        "/dashboard/login",
        data={"key": dashboard.parent_key, "next": "/dashboard/requests?status=failed"},
    )
    assert back.headers["location"] == "/dashboard/requests?status=failed"
    elsewhere = await dashboard.client.post(
        "/dashboard/login", data={"key": dashboard.parent_key, "next": "https://evil.example/"}
    )
    assert elsewhere.headers["location"] == "/dashboard"


async def test_another_parents_sub_account_is_not_found(
    dashboard: Dashboard, redis_url: str
) -> None:
    _, other_key = await create_parent_account(dashboard.dsn, "globex", redis_url)
    other = await dashboard.client.post(
        "/v1/sub-accounts",
        json={"name": "globex-customer"},
        headers={"Authorization": f"Bearer {other_key}"},
    )
    await dashboard.sign_in()

    page = await dashboard.client.get(f"/dashboard/sub-accounts/{other.json()['id']}")
    assert page.status_code == 404
    assert "globex-customer" not in page.text
    listing = await dashboard.client.get("/dashboard/sub-accounts")
    assert listing.status_code == 200 and "globex-customer" not in listing.text


async def test_static_files_are_served_from_the_package_and_nothing_else(
    dashboard: Dashboard,
) -> None:
    chart = await dashboard.client.get("/dashboard/static/vendor/chart.umd.min.js")
    assert chart.status_code == 200
    assert chart.headers["content-type"].startswith("text/javascript")
    assert "Chart.js v4" in chart.text[:200]
    assert (await dashboard.client.get("/dashboard/static/app.css")).status_code == 200
    assert (await dashboard.client.get("/dashboard/static/../sessions.py")).status_code == 404
    assert (await dashboard.client.get("/dashboard/static/vendor/README.md")).status_code == 404


async def test_the_request_log_pages_to_older_rows_and_filters_failures(
    dashboard: Dashboard,
) -> None:
    start = dashboard.clock.now - timedelta(hours=2)
    conn = await asyncpg.connect(dashboard.dsn)
    try:
        await conn.executemany(
            "INSERT INTO usage_ledger (request_id, parent_id, model, provider, status,"
            " cost_microcents, fee_microcents, finished_at) VALUES ($1, $2, $3, 'openai', $4,"
            " 1000000, 50000, $5)",
            [
                (
                    f"req_{index:03d}",
                    dashboard.parent_id,
                    "openai/gpt-5.4-mini",
                    500 if index % 10 == 0 else 200,
                    start + timedelta(seconds=index),
                )
                for index in range(70)
            ],
        )
    finally:
        await conn.close()
    await dashboard.sign_in()

    first = await dashboard.client.get("/dashboard/requests")
    assert first.status_code == 200
    assert first.text.count("data-request-id=") == 50
    assert 'data-request-id="req_069"' in first.text
    older = await dashboard.client.get("/dashboard/requests?after=req_020")
    assert older.text.count("data-request-id=") == 20
    assert 'data-request-id="req_019"' in older.text and "Older →" not in older.text
    assert 'href="/dashboard/requests?after=req_020"' in first.text

    failed = await dashboard.client.get("/dashboard/requests?status=failed")
    shown = failed.text.count("data-request-id=")
    assert shown == 7 and 'data-request-id="req_060"' in failed.text
    assert 'data-request-id="req_061"' not in failed.text
    unknown = await dashboard.client.get("/dashboard/requests?status=failed&after=req_nope")
    assert unknown.status_code == 303
    assert unknown.headers["location"] == "/dashboard/requests?status=failed"
