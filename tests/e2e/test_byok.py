"""BYOK provider keys end to end: the control plane's PUT/GET/DELETE, the key the mock provider
receives through Envoy and extproc, the ledger row, encryption at rest and the logs."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from aigw import keyspace
from aigw.secrets_box import KEY_FILE
from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import PLATFORM_KEYS, eventually

MESSAGES = [{"role": "user", "content": "Hi"}]
LEDGER_TIMEOUT_S = 5.0
USED_KEYS: set[str] = set()
"""Every BYOK key this module attached: none may ever appear in the gateway's logs."""


def new_key(provider: str) -> str:
    key = f"sk-byok-{provider}-{secrets.token_hex(16)}"
    USED_KEYS.add(key)
    return key


def attach(parent: Parent, provider: str, api_key: str) -> dict[str, Any]:
    response = parent.call("PUT", f"/provider-keys/{provider}", json={"api_key": api_key})
    assert response.status_code == 200, response.text
    return dict(response.json())


def detach(parent: Parent, provider: str) -> None:
    response = parent.call("DELETE", f"/provider-keys/{provider}")
    assert response.status_code == 200, response.text


def chat(e2e: E2E, key: str, model: str = "openai/gpt-5.4-mini", **extra: Any) -> httpx.Response:
    response = e2e.http.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES, **extra},
    )
    assert response.status_code == 200, response.text
    return response


def upstream_auth(e2e: E2E) -> str:
    return str(e2e.mock.last_request()["headers"].get("authorization", ""))


def sends_with(e2e: E2E, key: str, authorization: str) -> bool:
    """One request with `key`: did the provider receive `authorization`?"""
    chat(e2e, key)
    return upstream_auth(e2e) == authorization


async def ledger_row(e2e: E2E, request_id: str) -> asyncpg.Record:
    """The request's `usage_ledger` row, once the ingester wrote it."""
    conn = await asyncpg.connect(e2e.database_url)
    try:
        deadline = time.monotonic() + LEDGER_TIMEOUT_S
        while True:
            row = await conn.fetchrow(
                "SELECT byok, cost_microcents, fee_microcents, provider, sub_account_id"
                " FROM usage_ledger WHERE request_id = $1",
                request_id,
            )
            if row is not None:
                return row
            assert time.monotonic() < deadline, f"no ledger row for {request_id}"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_sub_account_traffic_goes_upstream_with_the_parents_key(
    e2e: E2E, parent: Parent
) -> None:
    byok = new_key("openai")
    attach(parent, "openai", byok)
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=1000)

    response = chat(e2e, account["key"])

    assert upstream_auth(e2e) == f"Bearer {byok}"
    assert "x-api-key" not in e2e.mock.last_request()["headers"]
    assert response.headers["x-aig-byok"] == "true"
    row = await ledger_row(e2e, response.headers["x-aig-request-id"])
    assert row["byok"] is True
    assert row["fee_microcents"] == 0
    assert row["cost_microcents"] > 0
    # The cost (and only the cost: no fee) counts against the sub-account's cap.
    spend = parent.call("GET", f"/sub-accounts/{account['id']}").json()["spend"]
    assert spend["spent_cents"] * 1_000_000 == row["cost_microcents"]

    streamed = e2e.http.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {account['key']}"},
        json={"model": "openai/gpt-5.4-mini", "messages": MESSAGES, "stream": True},
    )
    assert streamed.status_code == 200
    assert streamed.headers["x-aig-byok"] == "true"
    assert upstream_auth(e2e) == f"Bearer {byok}"
    streamed_row = await ledger_row(e2e, streamed.headers["x-aig-request-id"])
    assert streamed_row["byok"] is True and streamed_row["fee_microcents"] == 0


async def test_the_parents_own_traffic_uses_its_key(e2e: E2E, parent: Parent) -> None:
    byok = new_key("openai")
    attach(parent, "openai", byok)

    response = chat(e2e, parent.key)

    assert upstream_auth(e2e) == f"Bearer {byok}"
    row = await ledger_row(e2e, response.headers["x-aig-request-id"])
    assert row["byok"] is True and row["fee_microcents"] == 0 and row["sub_account_id"] is None


async def test_platform_key_requests_say_so_and_pay_the_fee(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"])

    response = chat(e2e, account["key"])

    assert upstream_auth(e2e) == f"Bearer {PLATFORM_KEYS['openai']}"
    assert response.headers["x-aig-byok"] == "false"
    row = await ledger_row(e2e, response.headers["x-aig-request-id"])
    assert row["byok"] is False and row["fee_microcents"] > 0


def test_anthropic_messages_and_chat_send_the_key_as_x_api_key(e2e: E2E, parent: Parent) -> None:
    byok = new_key("anthropic")
    attach(parent, "anthropic", byok)
    key = parent.create_sub_account(allowed_models=["anthropic/*"])["key"]

    with e2e.anthropic(key) as client:
        raw = client.messages.with_raw_response.create(
            model="anthropic/claude-haiku-4.5", max_tokens=64, messages=MESSAGES
        )
    native = e2e.mock.last_request()
    chat(e2e, key, "anthropic/claude-haiku-4.5")
    compatible = e2e.mock.last_request()

    assert raw.headers["x-aig-byok"] == "true"
    assert native["path"] == "/v1/messages"
    assert compatible["path"] == "/v1/chat/completions"
    for received in (native, compatible):
        assert received["headers"]["x-api-key"] == byok
        assert received["headers"]["anthropic-version"]
        assert "authorization" not in received["headers"]


def test_google_and_an_extra_provider_keep_their_base_paths(e2e: E2E, parent: Parent) -> None:
    google, local = new_key("google"), new_key("local")
    attach(parent, "google", google)
    attach(parent, "local", local)
    key = parent.create_sub_account(allowed_models=["google/*", "local/*"])["key"]

    chat(e2e, key, "google/gemini-2.5-flash")
    received = e2e.mock.last_request()
    assert received["path"] == "/v1beta/openai/chat/completions"
    assert received["headers"]["authorization"] == f"Bearer {google}"

    chat(e2e, key, "local/llama-local")
    received = e2e.mock.last_request()
    assert received["path"] == "/serving/v1/chat/completions"
    assert received["headers"]["authorization"] == f"Bearer {local}"


def test_put_and_delete_take_effect_within_a_second(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]
    chat(e2e, key)  # every extproc has now cached "no key attached" for this parent
    byok = new_key("openai")

    attach(parent, "openai", byok)
    assert eventually(lambda: sends_with(e2e, key, f"Bearer {byok}"))

    detach(parent, "openai")
    started = time.monotonic()
    platform = f"Bearer {PLATFORM_KEYS['openai']}"
    assert eventually(lambda: sends_with(e2e, key, platform))
    assert time.monotonic() - started < 1.0
    for _ in range(4):  # and stays so, on every extproc process
        response = chat(e2e, key)
        assert upstream_auth(e2e) == platform
        assert response.headers["x-aig-byok"] == "false"


def test_a_parents_key_is_never_used_for_another_parents_traffic(
    e2e: E2E, parent: Parent, other_parent: Parent
) -> None:
    attach(parent, "openai", new_key("openai"))
    other = other_parent.create_sub_account(allowed_models=["openai/*"])["key"]

    for _ in range(4):
        response = chat(e2e, other)
        assert upstream_auth(e2e) == f"Bearer {PLATFORM_KEYS['openai']}"
        assert response.headers["x-aig-byok"] == "false"
    chat(e2e, other_parent.key)
    assert upstream_auth(e2e) == f"Bearer {PLATFORM_KEYS['openai']}"
    assert other_parent.call("GET", "/provider-keys").json()["data"] == []


async def test_a_sub_account_without_byok_keeps_the_platform_key(e2e: E2E, parent: Parent) -> None:
    attach(parent, "openai", new_key("openai"))
    explicit = parent.create_sub_account(allowed_models=["openai/*"], byok=False)
    by_tier = parent.create_sub_account(tier="free")  # the tier says byok: false

    for account in (explicit, by_tier):
        response = chat(e2e, account["key"])
        assert upstream_auth(e2e) == f"Bearer {PLATFORM_KEYS['openai']}"
        assert response.headers["x-aig-byok"] == "false"
        row = await ledger_row(e2e, response.headers["x-aig-request-id"])
        assert row["byok"] is False and row["fee_microcents"] > 0


async def test_keys_are_encrypted_at_rest_and_listed_masked(e2e: E2E, parent: Parent) -> None:
    byok = new_key("openai")
    created = attach(parent, "openai", byok)

    assert byok not in str(created)
    assert created["masked_key"] == "****" + byok[-4:]
    assert created["last4"] == byok[-4:]
    conn = await asyncpg.connect(e2e.database_url)
    try:
        stored = await conn.fetchrow(
            "SELECT * FROM provider_keys WHERE parent_id = $1 AND provider = 'openai'", parent.id
        )
    finally:
        await conn.close()
    assert stored is not None
    secret_part = byok.removeprefix("sk-byok-openai-")
    for value in dict(stored).values():
        assert secret_part[:8] not in str(value)
    assert stored["ciphertext"].startswith("v1:")
    redis = aioredis.from_url(e2e.redis_url)
    try:
        projected = await redis.hgetall(keyspace.provider_keys(parent.id))
    finally:
        await redis.aclose()
    assert projected == {b"openai": stored["ciphertext"].encode()}  # sealed in Redis too

    listed = parent.call("GET", "/provider-keys").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    [entry] = listed["data"]
    assert entry["provider"] == "openai" and entry["masked_key"] == "****" + byok[-4:]
    assert entry["created_at"].endswith("Z") and entry["updated_at"].endswith("Z")
    assert byok not in parent.call("GET", "/provider-keys").text

    replaced = attach(parent, "openai", new_key("openai"))
    assert replaced["created_at"] == created["created_at"]
    assert replaced["last4"] != created["last4"] or replaced["updated_at"] >= created["updated_at"]


def test_provider_key_errors_use_the_envelope(e2e: E2E, parent: Parent) -> None:
    unknown = parent.call("PUT", "/provider-keys/nosuch", json={"api_key": "sk-abc-12345678"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "provider"
    for body in ({"api_key": ""}, {"api_key": "   "}, {}, {"api_key": "sk-a\r\nx-evil: 1"}):
        bad = parent.call("PUT", "/provider-keys/openai", json=body)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == "api_key"
        assert bad.json()["error"]["code"] == "invalid_request"
    assert "x-evil" not in bad.text
    assert parent.call("DELETE", "/provider-keys/openai").status_code == 404
    assert parent.call("DELETE", "/provider-keys/nosuch").status_code == 404

    sub_key = parent.create_sub_account()["key"]
    as_sub = httpx.get(
        f"{e2e.base_url}/provider-keys", headers={"Authorization": f"Bearer {sub_key}"}
    )
    assert as_sub.status_code == 401
    assert as_sub.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{e2e.base_url}/provider-keys").status_code == 401


def test_zz_logs_never_contain_a_provider_key(e2e: E2E, parent: Parent) -> None:
    """Last in the module: every key attached above (and one more, with a failing request)."""
    byok = new_key("openai")
    attach(parent, "openai", byok)
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]
    failed = e2e.http.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}", "x-mock-status": "401"},
        json={"model": "openai/gpt-5.4-mini", "messages": MESSAGES},
    )
    assert failed.status_code == 401  # the provider refused it: passed through
    assert byok not in failed.text
    detach(parent, "openai")

    data_dir = Path(e2e.gateway.config["data_dir"])
    logs = [*data_dir.joinpath("logs").glob("*.log"), e2e.gateway.log_path]
    assert len(logs) > 3
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    leaked = [used for used in USED_KEYS if used in text or used[-24:] in text]
    assert not leaked, f"provider keys found in the logs under {data_dir}"
    master_key = (data_dir / KEY_FILE).read_text().strip()  # generated by the first start
    assert master_key not in text
