"""The data plane through the real Envoy and extproc, driven by the real `openai` and
`anthropic` SDKs against the mock provider."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import PLATFORM_KEYS

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_chat_completion_reaches_the_provider_without_prefix_or_client_key(
    e2e: E2E, parent: Parent
) -> None:
    key = parent.create_sub_account(allowed_models=["openai/gpt-5.4-mini"])["key"]
    e2e.mock.clear()

    completion = e2e.openai(key).chat.completions.create(
        model="openai/gpt-5.4-mini", messages=MESSAGES
    )

    assert completion.choices[0].message.content
    received = e2e.mock.last_request()
    assert received["path"] == "/v1/chat/completions"
    assert received["body"]["model"] == "gpt-5.4-mini"
    assert received["headers"]["authorization"] == f"Bearer {PLATFORM_KEYS['openai']}"
    assert key not in str(received["headers"])
    assert not any(name.startswith("x-aig-") for name in received["headers"])


def test_streaming_chat_arrives_chunk_by_chunk(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]

    stream = e2e.openai(key).chat.completions.create(
        model="openai/gpt-5.4-mini", messages=MESSAGES, stream=True
    )
    chunks = list(stream)

    assert len(chunks) > 1
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text


def test_embeddings_completions_and_responses(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]
    client = e2e.openai(key)

    embedding = client.embeddings.create(model="openai/text-embedding-3-small", input="hello")
    assert embedding.data[0].embedding
    completion = client.completions.create(model="openai/gpt-3.5-turbo-instruct", prompt="Say")
    assert completion.choices[0].text
    response = client.responses.create(model="openai/gpt-5.4-mini", input="Hi")
    assert response.output_text
    assert e2e.mock.last_request()["body"]["model"] == "gpt-5.4-mini"
    events = [
        event.type
        for event in client.responses.create(model="openai/gpt-5.4-mini", input="Hi", stream=True)
    ]
    assert events[-1] == "response.completed"


def test_anthropic_sdk_messages_with_x_api_key(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["anthropic/*"])["key"]

    with e2e.anthropic(key) as client:
        message = client.messages.create(
            model="anthropic/claude-haiku-4.5", max_tokens=64, messages=MESSAGES
        )
        received = e2e.mock.last_request()
        with client.messages.stream(
            model="anthropic/claude-haiku-4.5", max_tokens=64, messages=MESSAGES
        ) as stream:
            streamed = stream.get_final_text()

    assert message.content[0].text  # type: ignore[union-attr]
    assert streamed
    assert received["path"] == "/v1/messages"
    assert received["body"]["model"] == "claude-haiku-4.5"
    assert received["headers"]["x-api-key"] == PLATFORM_KEYS["anthropic"]
    assert received["headers"]["anthropic-version"]
    assert "authorization" not in received["headers"]


def test_google_and_extra_provider_base_paths(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["google/*", "local/*"])["key"]
    client = e2e.openai(key)

    client.chat.completions.create(model="google/gemini-2.5-flash", messages=MESSAGES)
    received = e2e.mock.last_request()
    assert received["path"] == "/v1beta/openai/chat/completions"
    assert received["headers"]["authorization"] == f"Bearer {PLATFORM_KEYS['google']}"

    client.chat.completions.create(model="local/llama-local", messages=MESSAGES)
    assert e2e.mock.last_request()["path"] == "/serving/v1/chat/completions"


def test_model_outside_allow_list_is_403(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/gpt-5.4-mini"])["key"]

    with pytest.raises(openai.PermissionDeniedError) as raised:
        e2e.openai(key).chat.completions.create(
            model="anthropic/claude-haiku-4.5", messages=MESSAGES
        )

    assert raised.value.status_code == 403
    assert raised.value.code == "model_not_allowed"
    assert raised.value.body["model"] == "anthropic/claude-haiku-4.5"  # type: ignore[index]


def test_glob_allow_list_and_models_endpoint(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["google/gemini-*-flash*"])["key"]
    client = e2e.openai(key)

    client.chat.completions.create(model="google/gemini-2.5-flash", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="google/gemini-2.5-pro", messages=MESSAGES)
    listed = [model.id for model in client.models.list()]
    assert listed
    assert all(name.startswith("google/gemini-") and "flash" in name for name in listed)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-aig-" + "x" * 43},
        {"Authorization": "Bearer not-a-gateway-key"},
        {"x-api-key": "sk-aig-" + "z" * 43},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {},
    ],
    ids=["unknown", "malformed", "unknown-x-api-key", "basic-auth", "none"],
)
def test_bad_keys_are_401_before_anything_is_sent(e2e: E2E, headers: dict[str, str]) -> None:
    e2e.mock.clear()
    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers=headers,
        json={"model": "openai/gpt-5.4-mini", "messages": MESSAGES},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-aig-request-id"]
    assert e2e.mock.requests() == []


def test_openai_sdk_raises_authentication_error(e2e: E2E) -> None:
    with pytest.raises(openai.AuthenticationError):
        e2e.openai("sk-aig-" + "y" * 43).chat.completions.create(
            model="openai/gpt-5.4-mini", messages=MESSAGES
        )


def test_unknown_provider_and_unpriced_bare_name_are_404(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["*"])["key"]
    client = e2e.openai(key)

    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="nosuch/model-1", messages=MESSAGES)
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model-anywhere", messages=MESSAGES)


def test_bare_model_name_is_routed_to_its_provider(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]

    e2e.openai(key).chat.completions.create(model="gpt-5.4-mini", messages=MESSAGES)

    assert e2e.mock.last_request()["body"]["model"] == "gpt-5.4-mini"


def test_provider_without_key_is_a_clear_400(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["*"])["key"]

    with pytest.raises(openai.BadRequestError) as raised:
        e2e.openai(key).chat.completions.create(model="nokey/some-model", messages=MESSAGES)

    assert raised.value.code == "provider_not_configured"
    assert raised.value.body["provider"] == "nokey"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b"[1, 2]", None),
    ],
    ids=["not-json", "no-model", "model-not-string", "not-an-object"],
)
def test_bad_bodies_are_400(e2e: E2E, parent: Parent, body: bytes, param: str | None) -> None:
    key = parent.create_sub_account()["key"]
    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        content=body,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_request_ids_are_unique_and_on_success_too(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "openai/gpt-5.4-mini", "messages": MESSAGES}
    spoofed = {**headers, "x-request-id": "chosen-by-client"}

    ids = [
        httpx.post(f"{e2e.base_url}/chat/completions", headers=spoofed, json=body).headers[
            "x-aig-request-id"
        ]
        for _ in range(3)
    ]

    assert len(set(ids)) == 3
    assert "chosen-by-client" not in ids


def test_unknown_endpoint_is_404_in_the_openai_envelope(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account()["key"]
    response = httpx.post(
        f"{e2e.base_url}/files", headers={"Authorization": f"Bearer {key}"}, json={}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


def test_body_over_the_limit_is_413(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account()["key"]
    huge = "x" * (10 * 1024 * 1024 + 10)
    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": huge}]},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_parent_key_works_on_the_data_plane(e2e: E2E, parent: Parent) -> None:
    completion = e2e.openai(parent.key).chat.completions.create(
        model="openai/gpt-5.4-mini", messages=MESSAGES
    )
    assert completion.choices[0].message.content


def test_provider_errors_pass_through_with_their_status(e2e: E2E, parent: Parent) -> None:
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]
    with pytest.raises(openai.InternalServerError) as raised:
        e2e.openai(key).chat.completions.create(
            model="openai/gpt-5.4-mini",
            messages=MESSAGES,
            extra_headers={"x-mock-status": "500"},
        )
    assert raised.value.status_code == 500
    assert raised.value.response.headers["x-aig-request-id"]


def _ext_proc_messages(e2e: E2E) -> int:
    """How many messages Envoy has sent to extproc so far (its admin stats)."""
    port = e2e.gateway.config["server"]["envoy_admin_port"]
    stats = httpx.get(
        f"http://127.0.0.1:{port}/stats", params={"filter": "ext_proc.stream_msgs_sent$"}
    )
    return sum(int(line.rpartition(": ")[2]) for line in stats.text.splitlines() if line)


def test_a_non_streamed_answer_costs_three_ext_proc_messages(e2e: E2E, parent: Parent) -> None:
    """Request headers, request body, the whole answer: the response headers never go to
    extproc (Envoy hands their status and type over as metadata) and the answer comes in one
    message, chosen before it arrives from the request's `stream` field (bench/README.md)."""
    key = parent.create_sub_account(allowed_models=["openai/*"])["key"]
    client = e2e.openai(key)
    client.chat.completions.create(model="openai/gpt-5.4-mini", messages=MESSAGES)
    before = _ext_proc_messages(e2e)
    completion = client.chat.completions.with_raw_response.create(
        model="openai/gpt-5.4-mini", messages=MESSAGES
    )
    assert _ext_proc_messages(e2e) - before == 3
    assert completion.headers["x-aig-byok"] == "false"
    assert completion.parse().usage.total_tokens > 0
