"""The stream processor, driven message by message as Envoy would (no Envoy), with its key
policies in a real Redis."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from aigw import keyspace
from aigw.config import GatewayConfig, parse_config
from aigw.keys import generate_key, hash_key
from aigw.policy import KeyPolicy
from extproc.gateway import Gateway
from extproc.limits import LimitStore
from extproc.policies import PolicyStore
from extproc.processor import Processor
from extproc.server import respond

CONFIG = parse_config(
    """
providers:
  openai: {base_url: "https://api.openai.com/v1", api_key: "sk-platform-openai"}
  anthropic: {base_url: "https://api.anthropic.com/v1", auth: x-api-key, api_key: "sk-ant-platform"}
  local: {base_url: "http://127.0.0.1:9000/serving/v1", api_key: "local-key", models: [llama-local]}
  nokey: {base_url: "https://nokey.example/v1", api_key: ""}
pricing:
  local/llama-local: {input: 0.1, output: 0.2}
"""
)
REQUEST_ID = "5b0ea1d0-0000-4000-8000-000000000001"
POLICY = KeyPolicy(
    kind="sub_account",
    parent_id="acct_1",
    sub_account_id="sa_1",
    name="customer",
    allowed_models=("openai/*", "anthropic/claude-haiku-*", "local/*", "nokey/*"),
)


async def store_policy(redis_url: str, key: str, policy: KeyPolicy) -> None:
    client = aioredis.from_url(redis_url)
    try:
        await client.set(keyspace.key_policy(hash_key(key)), policy.to_json())
        await client.set(keyspace.PROJECTED_MARKER, "2026-11-27T10:00:00Z")
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running_gateway(redis_url: str, config: GatewayConfig = CONFIG) -> AsyncIterator[Gateway]:
    """A gateway on real Redis, closed (policies, pending settles, connections) afterwards."""
    policies = PolicyStore(redis_url)
    policies.start()
    limits_redis = aioredis.from_url(redis_url)
    gateway = Gateway.from_config(config, policies, LimitStore(limits_redis))
    try:
        yield gateway
    finally:
        await policies.close()
        await gateway.settler.drain(1.0)
        await limits_redis.aclose()


@pytest.fixture
async def gateway(redis_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(redis_url) as gateway:
        yield gateway


@pytest.fixture
async def key(redis_url: str) -> str:
    key = generate_key()
    await store_policy(redis_url, key, POLICY)
    return key


def request_headers(
    method: str,
    path: str,
    headers: dict[str, str],
    end_of_stream: bool = False,
    metadata: dict[str, dict[str, Any]] | None = None,
) -> ProcessingRequest:
    """What Envoy sends, with the dynamic metadata it forwards (aigw.processing_metadata)."""
    entries = {":method": method, ":path": path, "x-request-id": REQUEST_ID, **headers}
    header_map = HeaderMap(
        headers=[HeaderValue(key=name, raw_value=value.encode()) for name, value in entries.items()]
    )
    request = ProcessingRequest(
        request_headers=HttpHeaders(headers=header_map, end_of_stream=end_of_stream)
    )
    for namespace, values in (metadata or {}).items():
        request.metadata_context.filter_metadata[namespace].update(values)
    return request


def request_body(body: Any) -> ProcessingRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return ProcessingRequest(request_body=HttpBody(body=raw, end_of_stream=True))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def response_headers(response: ProcessingResponse) -> dict[str, str]:
    return {
        option.header.key: option.header.raw_value.decode()
        for option in response.immediate_response.headers.set_headers
    }


def assert_error(response: ProcessingResponse, status: int, code: str) -> dict[str, Any]:
    assert response.WhichOneof("response") == "immediate_response"
    immediate = response.immediate_response
    assert immediate.status.code == status
    headers = response_headers(response)
    assert headers["x-aig-request-id"] == REQUEST_ID
    assert headers["content-type"] == "application/json"
    error: dict[str, Any] = orjson.loads(immediate.body)["error"]
    assert error["code"] == code
    return error


def set_headers(mutation: Any) -> dict[str, tuple[str, int]]:
    return {
        option.header.key: (option.header.raw_value.decode(), option.append_action)
        for option in mutation.set_headers
    }


async def post(
    gateway: Gateway, headers: dict[str, str], body: Any, path: str = "/v1/chat/completions"
) -> ProcessingResponse:
    """Headers then body, as Envoy sends them; the headers must pass."""
    processor = Processor(gateway)
    first = await respond(processor, request_headers("POST", path, headers))
    assert first.WhichOneof("response") == "request_headers", first
    return await respond(processor, request_body(body))


# --- request headers: endpoint and key ------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer not-a-gateway-key"},
        {"authorization": "Basic c2stYWlnLXNvbWV0aGluZw=="},
        {"x-api-key": "sk-aig-short"},
        {"authorization": "Bearer sk-aig-" + "x" * 43},  # well formed, unknown
    ],
    ids=["missing", "malformed", "not-bearer", "short", "unknown"],
)
async def test_bad_or_missing_key_is_401_before_the_body(
    gateway: Gateway, key: str, headers: dict[str, str]
) -> None:
    response = await respond(
        Processor(gateway), request_headers("POST", "/v1/chat/completions", headers)
    )
    error = assert_error(response, 401, "invalid_api_key")
    assert error["type"] == "authentication_error"


@pytest.mark.parametrize(
    "change",
    [
        {"status": "disabled"},
        {"expires_at": time.time() - 1},
        {"key_expires_at": time.time() - 1},  # rotated out, grace over
    ],
    ids=["disabled", "expired", "rotated-out"],
)
async def test_unusable_key_is_401(
    gateway: Gateway, redis_url: str, change: dict[str, Any]
) -> None:
    key = generate_key()
    await store_policy(redis_url, key, dataclasses.replace(POLICY, **change))
    response = await respond(
        Processor(gateway), request_headers("POST", "/v1/chat/completions", bearer(key))
    )
    assert_error(response, 401, "invalid_api_key")


async def test_rotated_key_within_its_grace_still_works(gateway: Gateway, redis_url: str) -> None:
    key = generate_key()
    await store_policy(redis_url, key, dataclasses.replace(POLICY, key_expires_at=time.time() + 60))
    response = await respond(
        Processor(gateway), request_headers("POST", "/v1/chat/completions", bearer(key))
    )
    assert response.WhichOneof("response") == "request_headers"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/models"),
        ("POST", "/v1/chat/completions/extra"),
        ("GET", "/"),
    ],
)
async def test_unknown_url_is_404(gateway: Gateway, key: str, method: str, path: str) -> None:
    response = await respond(Processor(gateway), request_headers(method, path, bearer(key)))
    error = assert_error(response, 404, "unknown_url")
    assert error["message"] == f"Invalid URL ({method} {path})."


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/chat/completions?api-version=1",
    ],
)
async def test_data_plane_endpoints_pass_with_a_key(gateway: Gateway, key: str, path: str) -> None:
    response = await respond(Processor(gateway), request_headers("POST", path, bearer(key)))
    assert response.WhichOneof("response") == "request_headers"
    assert not response.request_headers.response.header_mutation.remove_headers


async def test_x_api_key_header_is_accepted(gateway: Gateway, key: str) -> None:
    response = await respond(
        Processor(gateway), request_headers("POST", "/v1/messages", {"x-api-key": key})
    )
    assert response.WhichOneof("response") == "request_headers"


async def test_client_sent_gateway_headers_are_removed(gateway: Gateway, key: str) -> None:
    headers = {**bearer(key), "x-aig-provider": "local", "x-aig-anything": "1"}
    response = await respond(
        Processor(gateway), request_headers("POST", "/v1/chat/completions", headers)
    )
    removed = response.request_headers.response.header_mutation.remove_headers
    assert set(removed) == {"x-aig-provider", "x-aig-anything"}


@pytest.mark.parametrize(
    ("path", "stream", "whole"),
    [
        ("/v1/chat/completions", False, True),
        ("/v1/messages", False, True),
        ("/v1/responses", False, True),
        ("/v1/chat/completions", True, False),
        ("/v1/embeddings", False, False),  # an answer can outgrow any buffer
        ("/v1/chat/completions", None, False),  # Envoy read no JSON: streamed meters either kind
    ],
)
async def test_the_request_headers_reply_chooses_how_the_answer_arrives(
    gateway: Gateway, key: str, path: str, stream: bool | None, whole: bool
) -> None:
    metadata = {} if stream is None else {"aigw.request": {"stream": stream}}
    response = await respond(
        Processor(gateway), request_headers("POST", path, bearer(key), metadata=metadata)
    )
    mode = response.mode_override
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.request_body_mode == ProcessingMode.BUFFERED
    expected = ProcessingMode.BUFFERED if whole else ProcessingMode.STREAMED
    assert mode.response_body_mode == expected


async def test_an_error_answer_passes_through_untouched(gateway: Gateway, key: str) -> None:
    processor = Processor(gateway)
    await respond(processor, request_headers("POST", "/v1/chat/completions", bearer(key)))
    sent = await respond(processor, request_body({"model": "openai/gpt-5.4-mini"}))
    assert sent.dynamic_metadata["aigw"]["x-aig-byok"] == "false"
    answer = ProcessingRequest(
        response_body=HttpBody(body=b'{"error": {"message": "slow down"}}', end_of_stream=True)
    )
    answer.metadata_context.filter_metadata["aigw.response"].update(
        {"status": "429", "content_type": "application/json"}
    )
    reply = await respond(processor, answer)
    assert reply.WhichOneof("response") == "response_body"
    assert not reply.response_body.HasField("response")


async def test_post_without_a_body_is_400(gateway: Gateway, key: str) -> None:
    response = await respond(
        Processor(gateway),
        request_headers("POST", "/v1/chat/completions", bearer(key), end_of_stream=True),
    )
    assert_error(response, 400, "invalid_request")


# --- GET /v1/models ---------------------------------------------------------------------------


async def test_models_lists_only_what_the_key_may_use(gateway: Gateway, key: str) -> None:
    response = await respond(
        Processor(gateway), request_headers("GET", "/v1/models", bearer(key), end_of_stream=True)
    )
    immediate = response.immediate_response
    assert immediate.status.code == 200
    assert response_headers(response)["x-aig-request-id"] == REQUEST_ID
    listing = orjson.loads(immediate.body)
    assert listing["object"] == "list"
    ids = [model["id"] for model in listing["data"]]
    assert "openai/gpt-5.4-mini" in ids
    assert "anthropic/claude-haiku-4-5" in ids
    assert "local/llama-local" in ids
    assert all(POLICY.allows(model) for model in ids)
    assert "anthropic/claude-sonnet-4-5" not in ids
    assert listing["data"][ids.index("openai/gpt-5.4-mini")] == {
        "id": "openai/gpt-5.4-mini",
        "object": "model",
        "created": 0,
        "owned_by": "openai",
    }


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/openai/gpt-5.4-mini",
        "/v1/models/openai%2Fgpt-5.4-mini",
        "/v1/models/gpt-5.4-mini",
    ],
)
async def test_one_model_by_id(gateway: Gateway, key: str, path: str) -> None:
    response = await respond(Processor(gateway), request_headers("GET", path, bearer(key)))
    assert response.immediate_response.status.code == 200
    assert orjson.loads(response.immediate_response.body)["id"] == "openai/gpt-5.4-mini"


@pytest.mark.parametrize(
    "path", ["/v1/models/anthropic/claude-sonnet-4-5", "/v1/models/openai/gpt-nonexistent"]
)
async def test_a_model_not_allowed_or_not_known_is_404(
    gateway: Gateway, key: str, path: str
) -> None:
    response = await respond(Processor(gateway), request_headers("GET", path, bearer(key)))
    assert_error(response, 404, "model_not_found")


# --- request body -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": []}, "model"),
        ({"model": 42, "messages": []}, "model"),
        ({"model": None}, "model"),
        ({"model": ["openai/gpt-5.4-mini"]}, "model"),
    ],
    ids=["not-json", "not-an-object", "no-model", "model-number", "model-null", "model-list"],
)
async def test_bad_body_is_400_naming_the_field(
    gateway: Gateway, key: str, body: Any, param: str | None
) -> None:
    error = assert_error(await post(gateway, bearer(key), body), 400, "invalid_request")
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param:
        assert "'model'" in error["message"]


async def test_model_outside_the_allow_list_is_403_naming_it(gateway: Gateway, key: str) -> None:
    body = {"model": "anthropic/claude-sonnet-4-5", "messages": []}
    error = assert_error(await post(gateway, bearer(key), body), 403, "model_not_allowed")
    assert error["type"] == "permission_error"
    assert error["model"] == "anthropic/claude-sonnet-4-5"


async def test_a_bare_name_is_checked_as_provider_slash_model(gateway: Gateway, key: str) -> None:
    body = {"model": "claude-sonnet-4-5", "messages": []}
    error = assert_error(await post(gateway, bearer(key), body), 403, "model_not_allowed")
    assert error["model"] == "anthropic/claude-sonnet-4-5"


@pytest.mark.parametrize("model", ["nosuch/model-1", "no-such-model-anywhere"])
async def test_unknown_provider_or_model_is_404(gateway: Gateway, key: str, model: str) -> None:
    body = {"model": model, "messages": []}
    error = assert_error(await post(gateway, bearer(key), body), 404, "model_not_found")
    assert error["model"] == model


async def test_provider_without_a_key_is_400_not_configured(gateway: Gateway, key: str) -> None:
    body = {"model": "nokey/some-model", "messages": []}
    error = assert_error(await post(gateway, bearer(key), body), 400, "provider_not_configured")
    assert error["provider"] == "nokey"


async def test_messages_endpoint_only_for_anthropic_models(gateway: Gateway, key: str) -> None:
    body = {"model": "openai/gpt-5.4-mini", "messages": []}
    response = await post(gateway, bearer(key), body, path="/v1/messages")
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "model"


async def test_rewrite_for_a_bearer_provider(gateway: Gateway, key: str) -> None:
    body = {"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "Hi ✓"}]}
    raw = orjson.dumps(body)
    headers = {**bearer(key), "content-length": str(len(raw))}

    response = await post(gateway, headers, body)

    assert response.WhichOneof("response") == "request_body"
    common = response.request_body.response
    assert common.clear_route_cache
    sent = orjson.loads(common.body_mutation.body)
    assert sent == {**body, "model": "gpt-5.4-mini"}
    mutation = common.header_mutation
    set_ = set_headers(mutation)
    assert set_["content-length"][0] == str(len(common.body_mutation.body))
    assert set_["x-aig-provider"][0] == "openai"
    assert set_["authorization"][0] == "Bearer sk-platform-openai"
    assert "x-api-key" in mutation.remove_headers
    assert key not in str(response)


async def test_rewrite_for_an_x_api_key_provider(gateway: Gateway, key: str) -> None:
    body = {"model": "anthropic/claude-haiku-4-5", "max_tokens": 64, "messages": []}
    headers = {"x-api-key": key, "content-length": str(len(orjson.dumps(body)))}

    response = await post(gateway, headers, body, path="/v1/messages")

    common = response.request_body.response
    assert orjson.loads(common.body_mutation.body)["model"] == "claude-haiku-4-5"
    set_ = set_headers(common.header_mutation)
    assert set_["x-api-key"][0] == "sk-ant-platform"
    assert set_["x-aig-provider"][0] == "anthropic"
    version, action = set_["anthropic-version"]
    assert version == "2023-06-01"
    assert action == common.header_mutation.set_headers[0].ADD_IF_ABSENT  # the client's wins
    assert "authorization" in common.header_mutation.remove_headers
    assert key not in str(response)


async def test_a_bare_name_goes_on_unchanged(gateway: Gateway, key: str) -> None:
    response = await post(gateway, bearer(key), {"model": "llama-local", "messages": []})
    common = response.request_body.response
    assert not common.HasField("body_mutation")
    assert "content-length" not in set_headers(common.header_mutation)
    assert set_headers(common.header_mutation)["x-aig-provider"][0] == "local"
    assert common.clear_route_cache


async def test_a_chunked_request_gets_no_content_length(gateway: Gateway, key: str) -> None:
    response = await post(gateway, bearer(key), {"model": "openai/gpt-5.4-mini"})
    common = response.request_body.response
    assert common.body_mutation.body == b'{"model":"gpt-5.4-mini"}'
    assert "content-length" not in set_headers(common.header_mutation)


async def test_response_phases_pass_through(gateway: Gateway) -> None:
    processor = Processor(gateway)
    headers = await respond(processor, ProcessingRequest(response_headers=HttpHeaders()))
    body = await respond(processor, ProcessingRequest(response_body=HttpBody(body=b"<html>")))
    assert headers.WhichOneof("response") == "response_headers"
    assert body.WhichOneof("response") == "response_body"
    assert not headers.response_headers.HasField("response")
    assert not body.response_body.HasField("response")
