"""Control-plane changes seen on the data plane within one second, and tenant isolation,
through the one base URL."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import eventually

MESSAGES = [{"role": "user", "content": "Hi"}]
MODEL = "openai/gpt-5.4-mini"


def chat_status(e2e: E2E, key: str, model: str = MODEL) -> int:
    return httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES},
    ).status_code


def test_the_issue_walkthrough(e2e: E2E, parent: Parent) -> None:
    created = httpx.post(
        f"{e2e.base_url}/sub-accounts",
        headers=parent.headers,
        json={
            "name": "customer_42",
            "tier": "free",
            "allowed_models": ["openai/gpt-5.4-mini"],
            "default_tag": "tenant:42",
        },
    )
    assert created.status_code == 201
    key = created.json()["key"]
    client = e2e.openai(key)

    assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices
    assert list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="anthropic/claude-haiku-4.5", messages=MESSAGES)


def test_patch_allowed_models_takes_effect_within_a_second(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=[MODEL])
    assert chat_status(e2e, account["key"], "google/gemini-2.5-flash") == 403

    patched = parent.call(
        "PATCH", f"/sub-accounts/{account['id']}", json={"allowed_models": ["google/*"]}
    )
    assert patched.status_code == 200

    assert eventually(lambda: chat_status(e2e, account["key"], "google/gemini-2.5-flash") == 200)
    assert chat_status(e2e, account["key"]) == 403


def test_delete_revokes_the_key_within_a_second(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=[MODEL])
    assert chat_status(e2e, account["key"]) == 200

    assert parent.call("DELETE", f"/sub-accounts/{account['id']}").status_code == 200

    assert eventually(lambda: chat_status(e2e, account["key"]) == 401)


def test_rotate_without_grace_kills_the_old_key(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=[MODEL])
    assert chat_status(e2e, account["key"]) == 200

    rotated = parent.call(
        "POST", f"/sub-accounts/{account['id']}/rotate", json={"grace_seconds": 0}
    )
    assert rotated.status_code == 200
    new_key = rotated.json()["key"]

    assert new_key != account["key"]
    assert eventually(lambda: chat_status(e2e, account["key"]) == 401)
    assert chat_status(e2e, new_key) == 200


def test_rotate_with_grace_keeps_both_keys_working(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=[MODEL])
    rotated = parent.call(
        "POST", f"/sub-accounts/{account['id']}/rotate", json={"grace_seconds": 60}
    )
    new_key = rotated.json()["key"]

    assert chat_status(e2e, new_key) == 200
    assert chat_status(e2e, account["key"]) == 200


def test_a_sub_account_key_cannot_manage_sub_accounts(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account()
    answer = httpx.post(
        f"{e2e.base_url}/sub-accounts",
        headers={"Authorization": f"Bearer {account['key']}"},
        json={"name": "x"},
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_cross_parent_objects_answer_404(e2e: E2E, parent: Parent, other_parent: Parent) -> None:
    account = parent.create_sub_account()
    headers = other_parent.headers
    url = f"{e2e.base_url}/sub-accounts/{account['id']}"

    assert httpx.get(url, headers=headers).status_code == 404
    assert httpx.patch(url, headers=headers, json={"name": "stolen"}).status_code == 404
    assert httpx.delete(url, headers=headers).status_code == 404
    assert httpx.post(f"{url}/rotate", headers=headers, json={}).status_code == 404
    listed = httpx.get(f"{e2e.base_url}/sub-accounts", headers=headers).json()["data"]
    assert account["id"] not in [row["id"] for row in listed]


def test_me_shows_a_customer_its_own_budget(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(spend_cap_cents=1234)
    me = httpx.get(
        f"{e2e.base_url}/me", headers={"Authorization": f"Bearer {account['key']}"}
    ).json()
    assert me["id"] == account["id"]
    assert "key" not in me
    assert me["spend"]["remaining_cents"] == 1234


def test_openapi_and_docs_are_served_through_envoy(e2e: E2E) -> None:
    spec = httpx.get(f"{e2e.base_url}/openapi.json")
    assert spec.status_code == 200
    assert "/v1/sub-accounts" in spec.json()["paths"]
    assert httpx.get(f"{e2e.gateway.url}/docs").status_code == 200
