"""Per-request tags and usage analytics through the real gateway: requests sent with the OpenAI
SDK and an `x-aig-tags` header show up in GET /v1/usage grouped by tag within 5 seconds, and a
bad tags header is refused before anything reaches the provider."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import E2E, Parent

MESSAGES = [{"role": "user", "content": "Hi"}]
MODEL = "openai/gpt-5.4-mini"
VISIBLE_WITHIN_S = 5.0  # API.md §6: usage reaches GET /v1/usage within 5 seconds


def usage_by_tag(parent: Parent, sub_account_id: str) -> dict[str | None, dict[str, Any]]:
    response = parent.call(
        "GET", "/usage", params={"group_by": "tag", "sub_account_id": sub_account_id}
    )
    assert response.status_code == 200, response.text
    rows = json.loads(response.content, parse_float=Decimal)["data"]
    return {row.pop("tag"): row for row in rows}


def test_tagged_requests_are_grouped_by_tag_within_5_seconds(e2e: E2E, parent: Parent) -> None:
    sub = parent.create_sub_account(default_tag="tenant:42", allowed_models=[MODEL])
    client = e2e.openai(sub["key"])
    e2e.mock.clear()

    client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_headers={"x-aig-tags": "feature:chat, env=prod"}
    )
    client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_headers={"x-aig-tags": "feature:chat,,tenant:42"}
    )
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-aig-tags": "feature:search"},
        )
    )
    ended = time.monotonic()
    assert chunks

    assert all("x-aig-tags" not in received["headers"] for received in e2e.mock.requests())
    expected = {"tenant:42": 4, "feature:chat": 2, "env=prod": 1, "feature:search": 1}
    counted: dict[str | None, dict[str, Any]] = {}
    while time.monotonic() - ended < VISIBLE_WITHIN_S:
        counted = usage_by_tag(parent, sub["id"])
        if {tag: row["requests"] for tag, row in counted.items()} == expected:
            break
        time.sleep(0.1)
    assert {tag: row["requests"] for tag, row in counted.items()} == expected

    log = parent.call("GET", "/requests", params={"sub_account_id": sub["id"], "limit": 10})
    requests = json.loads(log.content, parse_float=Decimal)["data"]
    assert sorted(tuple(row["tags"]) for row in requests) == sorted(
        [
            ("env=prod", "feature:chat", "tenant:42"),
            ("feature:chat", "tenant:42"),
            ("tenant:42",),
            ("feature:search", "tenant:42"),
        ]
    )
    assert [row["stream"] for row in requests].count(True) == 1
    whole = counted["tenant:42"]
    assert whole["input_tokens"] == sum(row["input_tokens"] for row in requests) > 0
    assert whole["total_cents"] == sum(row["total_cents"] for row in requests) > 0

    own = httpx.get(
        f"{e2e.base_url}/usage",
        params={"group_by": "tag", "tag": "feature:chat"},
        headers={"Authorization": f"Bearer {sub['key']}"},
    )
    own_rows = {row["tag"]: row["requests"] for row in own.json()["data"]}
    assert own_rows == {"env=prod": 1, "feature:chat": 2, "tenant:42": 2}


@pytest.mark.parametrize(
    "header",
    ["has space", ",".join(f"t{n}" for n in range(11)), "x" * 65, "semi;colon"],
    ids=["space", "eleven-tags", "too-long", "semicolon"],
)
def test_a_bad_tags_header_is_a_400_naming_it(e2e: E2E, parent: Parent, header: str) -> None:
    key = parent.create_sub_account(allowed_models=[MODEL])["key"]
    e2e.mock.clear()

    with pytest.raises(openai.BadRequestError) as raised:
        e2e.openai(key).chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"x-aig-tags": header}
        )

    assert raised.value.code == "invalid_request"
    assert raised.value.param == "x-aig-tags"
    assert "x-aig-tags" in raised.value.message
    assert e2e.mock.requests() == []
