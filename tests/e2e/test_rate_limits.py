"""Rate limits through two Envoys and two extproc processes on one Redis: exact across
replicas, OpenAI's headers on refusals and successes, TPM, isolation, PATCH within a second."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import openai

from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import eventually

MESSAGES = [{"role": "user", "content": "Hi"}]
BODY = {"model": "openai/gpt-5.4-mini", "messages": MESSAGES, "max_tokens": 5}


async def test_rpm_is_exact_across_two_gateways(
    e2e: E2E, second_gateway_url: str, parent: Parent
) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], rate_limit_rpm=20)
    headers = {"Authorization": f"Bearer {account['key']}"}
    bases = itertools.cycle([e2e.base_url, f"{second_gateway_url}/v1"])

    async with httpx.AsyncClient(timeout=30) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"{next(bases)}/chat/completions", headers=headers, json=BODY)
                for _ in range(40)
            )
        )

    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 20, statuses
    refused = next(response for response in responses if response.status_code == 429)
    error = refused.json()["error"]
    assert (error["code"], error["type"], error["limit"]) == (
        "rate_limit_exceeded",
        "rate_limit_error",
        "rpm",
    )
    assert 1 <= int(refused.headers["retry-after"]) <= 61  # 1 s buckets, counted whole
    assert refused.headers["x-ratelimit-limit-requests"] == "20"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"]
    served = next(response for response in responses if response.status_code == 200)
    assert served.headers["x-ratelimit-limit-requests"] == "20"
    assert int(served.headers["x-ratelimit-remaining-requests"]) < 20


def test_openai_sdk_raises_rate_limit_error(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], rate_limit_rpm=1)
    client = e2e.openai(account["key"])
    client.chat.completions.create(**BODY)

    try:
        client.chat.completions.create(**BODY)
    except openai.RateLimitError as error:
        assert error.code == "rate_limit_exceeded"
        assert error.response.headers["retry-after"]
    else:
        raise AssertionError("the second request of an RPM of 1 was admitted")


def test_tpm_refuses_once_the_window_is_full(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], rate_limit_tpm=4000)
    headers = {"Authorization": f"Bearer {account['key']}", "x-mock-chunks": "1000"}
    body = {**BODY, "max_tokens": 300}

    statuses = []
    for _ in range(30):
        response = httpx.post(f"{e2e.base_url}/chat/completions", headers=headers, json=body)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["limit"] == "tpm"
            assert response.headers["x-ratelimit-limit-tokens"] == "4000"
            assert 1 <= int(response.headers["retry-after"]) <= 61
            break
    assert statuses[0] == 200
    assert statuses[-1] == 429, statuses


def test_sub_accounts_do_not_share_limits(e2e: E2E, parent: Parent) -> None:
    first = parent.create_sub_account(allowed_models=["openai/*"], rate_limit_rpm=1)
    second = parent.create_sub_account(allowed_models=["openai/*"], rate_limit_rpm=1)
    url = f"{e2e.base_url}/chat/completions"

    assert httpx.post(url, headers=_bearer(first["key"]), json=BODY).status_code == 200
    assert httpx.post(url, headers=_bearer(first["key"]), json=BODY).status_code == 429
    assert httpx.post(url, headers=_bearer(second["key"]), json=BODY).status_code == 200


def test_tier_change_by_patch_takes_effect_within_a_second(e2e: E2E, parent: Parent) -> None:
    account = parent.create_sub_account(allowed_models=["openai/*"], rate_limit_rpm=1)
    url = f"{e2e.base_url}/chat/completions"
    headers = _bearer(account["key"])
    assert httpx.post(url, headers=headers, json=BODY).status_code == 200
    assert httpx.post(url, headers=headers, json=BODY).status_code == 429

    patched = parent.call(
        "PATCH", f"/sub-accounts/{account['id']}", json={"tier": "pro", "rate_limit_rpm": 600}
    )
    assert patched.status_code == 200, patched.text

    assert eventually(lambda: httpx.post(url, headers=headers, json=BODY).status_code == 200)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
