"""Isolation through the real gateway: every control-plane route under /v1, taken from the
served OpenAPI document (so a new route is covered the day it is added), called with no key, with
revoked keys, with a sub-account key, and with another parent's ids. What must hold: 401 without
a live key; a sub-account key opens only GET /v1/me and its own /v1/usage and /v1/requests;
another parent's objects answer 404 and are left untouched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import E2E, Parent

MODEL = "openai/gpt-5.4-mini"
SUB_ACCOUNT_ROUTES = {("GET", "/v1/me"), ("GET", "/v1/usage"), ("GET", "/v1/requests")}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/sub-accounts"): {"name": "intruder"},
    ("PATCH", "/v1/sub-accounts/{sub_account_id}"): {"name": "renamed", "spend_cap_cents": 0},
    ("POST", "/v1/sub-accounts/{sub_account_id}/rotate"): {"grace_seconds": 0},
    ("POST", "/v1/webhooks"): {"url": "http://127.0.0.1:9/hook", "events": ["*"]},
    ("PUT", "/v1/provider-keys/{provider}"): {"api_key": "sk-intruder-provider-key-0000"},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the template, e.g. /v1/sub-accounts/{sub_account_id}
    params: tuple[str, ...]  # its path parameters

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Tenant:
    parent: Parent
    sub_account: dict[str, Any]
    sibling: dict[str, Any]
    webhook_id: str

    def ids(self) -> dict[str, str]:
        return {
            "sub_account_id": self.sub_account["id"],
            "webhook_id": self.webhook_id,
            "provider": "openai",
        }


def operations(e2e: E2E) -> list[Operation]:
    document = httpx.get(f"{e2e.base_url}/openapi.json", timeout=10).json()
    found = []
    for path, methods in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            params = tuple(p["name"] for p in operation.get("parameters", []) if p["in"] == "path")
            found.append(Operation(method.upper(), path, params))
    assert len(found) >= 17, found
    return found


def call(e2e: E2E, operation: Operation, key: str | None, ids: dict[str, str]) -> httpx.Response:
    unknown = [name for name in operation.params if name not in ids]
    if unknown:
        pytest.fail(f"{operation}: no test id for path parameter(s) {unknown}; add one to ids()")
    path = operation.path.format(**{name: ids[name] for name in operation.params})
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(
        operation.method,
        f"{e2e.gateway.url}{path}",
        headers=headers,
        json=BODIES.get((operation.method, operation.path)),
        timeout=30,
    )


def _tenant(e2e: E2E, parent: Parent) -> Tenant:
    account = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    sibling = parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)
    webhook = parent.call(
        "POST", "/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["*"]}
    )
    assert webhook.status_code == 201, webhook.text
    provider_key = parent.call("PUT", "/provider-keys/openai", json={"api_key": "sk-own-0000"})
    assert provider_key.status_code == 200, provider_key.text
    for key in (account["key"], sibling["key"]):
        response = e2e.openai(key).chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        assert response.http_response.status_code == 200
    return Tenant(parent, account, sibling, webhook.json()["id"])


@pytest.fixture
def tenants(e2e: E2E, parent: Parent, other_parent: Parent) -> Iterator[tuple[Tenant, Tenant]]:
    mine, theirs = _tenant(e2e, parent), _tenant(e2e, other_parent)
    for tenant in (mine, theirs):
        wait_for_usage(tenant)
    yield mine, theirs


def wait_for_usage(tenant: Tenant) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = tenant.parent.call("GET", "/requests")
        if response.status_code == 200 and len(response.json()["data"]) >= 2:
            return
        time.sleep(0.1)
    raise AssertionError("the requests of the test's sub-accounts never reached /v1/requests")


def assert_401(response: httpx.Response, operation: Operation) -> None:
    assert response.status_code == 401, f"{operation}: {response.status_code} {response.text}"
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_every_route_refuses_a_missing_or_malformed_key(
    e2e: E2E, tenants: tuple[Tenant, Tenant]
) -> None:
    mine, _ = tenants
    for operation in operations(e2e):
        for key in (None, "not-a-key", "sk-aig-" + "0" * 43):
            assert_401(call(e2e, operation, key, mine.ids()), operation)


def test_revoked_and_rotated_out_keys_open_nothing(
    e2e: E2E, tenants: tuple[Tenant, Tenant]
) -> None:
    mine, _ = tenants
    parent = mine.parent
    deleted = parent.create_sub_account()
    assert parent.call("DELETE", f"/sub-accounts/{deleted['id']}").status_code == 200
    rotated = parent.create_sub_account()
    rotation = parent.call("POST", f"/sub-accounts/{rotated['id']}/rotate", json={})
    assert rotation.status_code == 200, rotation.text
    for operation in operations(e2e):
        for key in (deleted["key"], rotated["key"]):
            assert_401(call(e2e, operation, key, mine.ids()), operation)


def test_a_sub_account_key_opens_only_its_own_data(
    e2e: E2E, tenants: tuple[Tenant, Tenant]
) -> None:
    mine, theirs = tenants
    own = mine.sub_account
    strangers = {mine.sibling["id"], theirs.sub_account["id"], theirs.sibling["id"]}
    for operation in operations(e2e):
        response = call(e2e, operation, own["key"], mine.ids())
        if (operation.method, operation.path) not in SUB_ACCOUNT_ROUTES:
            assert response.status_code in (401, 403), f"{operation}: {response.text}"
            continue
        assert response.status_code == 200, f"{operation}: {response.text}"
        assert not any(stranger in response.text for stranger in strangers), operation
        if operation.path == "/v1/me":
            assert response.json()["id"] == own["id"]
            assert "key" not in response.json()
        else:
            rows = response.json()["data"]
            assert rows, f"{operation}: the sub-account's own request is missing"
            assert {row.get("sub_account_id", own["id"]) for row in rows} == {own["id"]}
        for stranger in strangers:  # asking for another's data by filter gives none of it
            filtered = e2e.http.get(
                f"{e2e.gateway.url}{operation.path}",
                params={"sub_account_id": stranger},
                headers={"Authorization": f"Bearer {own['key']}"},
            )
            assert stranger not in filtered.text or filtered.status_code == 404, operation
            assert filtered.status_code in (200, 400, 403, 404), filtered.text


def test_another_parents_ids_answer_404_and_change_nothing(
    e2e: E2E, tenants: tuple[Tenant, Tenant]
) -> None:
    mine, theirs = tenants
    before = snapshot(theirs)
    for operation in operations(e2e):
        if not set(operation.params) - {"provider"}:
            continue  # no object id in the path: a provider name is each parent's own
        response = call(e2e, operation, mine.parent.key, theirs.ids())
        assert response.status_code == 404, f"{operation}: {response.status_code} {response.text}"
    for operation in operations(e2e):
        if operation.method != "GET" or operation.params:
            continue
        response = call(e2e, operation, mine.parent.key, {})
        assert response.status_code == 200, f"{operation}: {response.text}"
        for their_id in (theirs.sub_account["id"], theirs.sibling["id"], theirs.webhook_id):
            assert their_id not in response.text, f"{operation} shows {their_id}"
    assert snapshot(theirs) == before
    key = theirs.sub_account["key"]
    still_served = e2e.openai(key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert still_served.http_response.status_code == 200


def snapshot(tenant: Tenant) -> dict[str, Any]:
    """What a parent can see of its own objects (spend moves with traffic: left out)."""
    parent = tenant.parent
    account = parent.call("GET", f"/sub-accounts/{tenant.sub_account['id']}").json()
    account.pop("spend", None)
    return {
        "sub_account": account,
        "webhooks": parent.call("GET", "/webhooks").json()["data"],
        "provider_keys": parent.call("GET", "/provider-keys").json()["data"],
    }
