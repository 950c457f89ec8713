"""extproc with BYOK: the stream processor, message by message as Envoy drives it, with key
policies and sealed provider keys in a real Redis (`extproc.byok.ProviderKeyCache`)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from aigw import keyspace
from aigw.config import parse_config
from aigw.keys import generate_key, hash_key
from aigw.policy import KeyPolicy
from aigw.secrets_box import Keyring, provider_key_context
from extproc.byok import ProviderKeyCache
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
  nokey: {base_url: "http://127.0.0.1:9000/serving/v1", api_key: "", models: [model-x]}
pricing:
  nokey/model-x: {input: 0.1, output: 0.2}
"""
)
REQUEST_ID = "5b0ea1d0-0000-4000-8000-00000000b70c"
PARENT = "acct_byok"
SUB = KeyPolicy(kind="sub_account", parent_id=PARENT, sub_account_id="sa_1", name="customer")
OWN = KeyPolicy(kind="parent", parent_id=PARENT, sub_account_id=None, name="acme")
KEYRING = Keyring.from_keys(os.urandom(32))
BYOK_OPENAI = "sk-byok-openai-0123456789abcdef"
BODY = {"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "Hi"}]}


@dataclasses.dataclass
class Setup:
    gateway: Gateway
    redis: aioredis.Redis

    async def policy(self, policy: KeyPolicy) -> str:
        key = generate_key()
        await self.redis.set(keyspace.key_policy(hash_key(key)), policy.to_json())
        return key

    async def attach(self, provider: str, api_key: str, parent: str = PARENT) -> None:
        token = KEYRING.encrypt(api_key, provider_key_context(parent, provider))
        await self.redis.hset(keyspace.provider_keys(parent), provider, token)
        await self.redis.publish(keyspace.INVALIDATION_CHANNEL, keyspace.byok_invalidation(parent))


@pytest.fixture
async def setup(redis_url: str) -> AsyncIterator[Setup]:
    redis = aioredis.from_url(redis_url)
    await redis.set(keyspace.PROJECTED_MARKER, "2026-11-27T10:00:00Z")
    await redis.set(keyspace.BYOK_PROJECTED_MARKER, "2026-11-27T10:00:00Z")
    policies = PolicyStore(redis_url)
    policies.start()
    byok = ProviderKeyCache(redis_url, KEYRING, CONFIG.providers)
    byok.start()
    limits = aioredis.from_url(redis_url)
    gateway = Gateway.from_config(CONFIG, policies, LimitStore(limits), byok=byok)
    await wait_for(lambda: byok.subscribed and policies.subscribed)
    yield Setup(gateway, redis)
    await policies.close()
    await byok.close()
    await gateway.settler.drain(1.0)
    await limits.aclose()
    await redis.aclose()


async def wait_for(check: Any) -> None:
    deadline = time.monotonic() + 2.0
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _headers(entries: dict[str, str]) -> HeaderMap:
    return HeaderMap(
        headers=[HeaderValue(key=name, raw_value=value.encode()) for name, value in entries.items()]
    )


@dataclasses.dataclass
class Sent:
    processor: Processor
    reply: ProcessingResponse


async def post(gateway: Gateway, key: str, body: dict[str, Any] = BODY) -> Sent:
    """Headers then body, as Envoy sends them: the processor and its request-body reply."""
    processor = Processor(gateway)
    headers = {":method": "POST", ":path": "/v1/chat/completions", "x-request-id": REQUEST_ID}
    first = await respond(
        processor,
        ProcessingRequest(
            request_headers=HttpHeaders(
                headers=_headers({**headers, "authorization": f"Bearer {key}"})
            )
        ),
    )
    assert first.WhichOneof("response") == "request_headers", first
    reply = await respond(
        processor,
        ProcessingRequest(request_body=HttpBody(body=orjson.dumps(body), end_of_stream=True)),
    )
    return Sent(processor, reply)


def upstream_headers(reply: ProcessingResponse) -> dict[str, str]:
    assert reply.WhichOneof("response") == "request_body", reply
    mutation = reply.request_body.response.header_mutation
    return {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}


def error_of(reply: ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert reply.WhichOneof("response") == "immediate_response", reply
    immediate = reply.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)["error"]


async def test_a_sub_account_with_byok_uses_the_parents_key(setup: Setup) -> None:
    await setup.attach("openai", BYOK_OPENAI)
    key = await setup.policy(SUB)

    sent = await post(setup.gateway, key)

    headers = upstream_headers(sent.reply)
    assert headers["authorization"] == f"Bearer {BYOK_OPENAI}"
    assert headers["x-aig-provider"] == "openai"
    # the response header Envoy is to add (aigw.processing_metadata)
    assert sent.reply.dynamic_metadata["aigw"]["x-aig-byok"] == "true"


async def test_the_parents_own_key_always_uses_byok(setup: Setup) -> None:
    await setup.attach("openai", BYOK_OPENAI)
    key = await setup.policy(dataclasses.replace(OWN, byok=False))

    sent = await post(setup.gateway, key)

    assert upstream_headers(sent.reply)["authorization"] == f"Bearer {BYOK_OPENAI}"


async def test_byok_false_keeps_the_platform_key(setup: Setup) -> None:
    await setup.attach("openai", BYOK_OPENAI)
    key = await setup.policy(dataclasses.replace(SUB, byok=False))

    sent = await post(setup.gateway, key)

    assert upstream_headers(sent.reply)["authorization"] == "Bearer sk-platform-openai"


async def test_anthropic_style_auth_with_the_parents_key(setup: Setup) -> None:
    await setup.attach("anthropic", "sk-ant-byok-0123456789")
    key = await setup.policy(SUB)

    body = {**BODY, "model": "anthropic/claude-haiku-4.5"}
    sent = await post(setup.gateway, key, body)

    reply = sent.reply
    headers = upstream_headers(reply)
    assert headers["x-api-key"] == "sk-ant-byok-0123456789"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" in reply.request_body.response.header_mutation.remove_headers


async def test_another_parents_key_is_never_used(setup: Setup) -> None:
    await setup.attach("openai", BYOK_OPENAI, parent="acct_other")
    key = await setup.policy(SUB)

    sent = await post(setup.gateway, key)

    assert upstream_headers(sent.reply)["authorization"] == "Bearer sk-platform-openai"


async def test_no_platform_key_needs_the_parents_key(setup: Setup) -> None:
    key = await setup.policy(SUB)
    body = {**BODY, "model": "nokey/model-x"}

    status, error = error_of((await post(setup.gateway, key, body)).reply)
    assert (status, error["code"], error["provider"]) == (400, "provider_not_configured", "nokey")

    await setup.attach("nokey", "sk-local-byok-0123456789")
    await wait_for(lambda: PARENT not in setup.gateway.byok._cache)  # type: ignore[union-attr]
    sent = await post(setup.gateway, key, body)
    assert upstream_headers(sent.reply)["authorization"] == "Bearer sk-local-byok-0123456789"


async def test_a_change_is_seen_once_published(setup: Setup) -> None:
    key = await setup.policy(SUB)
    await post(setup.gateway, key)  # cached: no key attached

    await setup.attach("openai", BYOK_OPENAI)

    async def uses_byok() -> bool:
        headers = upstream_headers((await post(setup.gateway, key)).reply)
        return headers["authorization"] == f"Bearer {BYOK_OPENAI}"

    deadline = time.monotonic() + 1.0
    while not await uses_byok():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    await setup.redis.delete(keyspace.provider_keys(PARENT))
    await setup.redis.publish(keyspace.INVALIDATION_CHANNEL, keyspace.BYOK_INVALIDATE_ALL)
    deadline = time.monotonic() + 1.0
    while await uses_byok():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_keys_not_yet_projected_fail_closed(setup: Setup) -> None:
    key = await setup.policy(SUB)
    await setup.redis.delete(keyspace.BYOK_PROJECTED_MARKER)

    status, error = error_of((await post(setup.gateway, key)).reply)

    assert (status, error["code"]) == (503, "gateway_unavailable")


async def test_a_key_that_does_not_open_fails_closed(setup: Setup) -> None:
    other = Keyring.from_keys(os.urandom(32))
    token = other.encrypt(BYOK_OPENAI, provider_key_context(PARENT, "openai"))
    await setup.redis.hset(keyspace.provider_keys(PARENT), "openai", token)
    key = await setup.policy(SUB)

    status, error = error_of((await post(setup.gateway, key)).reply)

    assert (status, error["code"]) == (503, "gateway_unavailable")
    assert BYOK_OPENAI not in str(error)
    # The other providers of that parent are unaffected.
    anthropic = await post(setup.gateway, key, {**BODY, "model": "anthropic/claude-haiku-4.5"})
    assert upstream_headers(anthropic.reply)["x-api-key"] == "sk-ant-platform"
