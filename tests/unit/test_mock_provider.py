"""The mock provider: answers that the real `openai` and `anthropic` SDKs parse, streams shaped
like the recordings in shared/fixtures/providers/, deterministic usage, test-control headers and
the request log."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from starlette.applications import Starlette

from aigw.mock import MockServer, create_mock_app
from aigw.mock.text import WORDS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
HELLO = [{"role": "user", "content": "Hello, mock!"}]  # 12 bytes: 3 input tokens


@pytest.fixture
def app() -> Starlette:
    return create_mock_app()


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        yield client


@pytest.fixture
def oai(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://mock/any/base/v1", api_key="sk-test", http_client=http, max_retries=0
    )


@pytest.fixture
async def claude(app: Starlette) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # The anthropic SDK brings its own fork of httpx.
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://mock") as client:
        yield anthropic.AsyncAnthropic(
            base_url="http://mock", api_key="sk-ant-test", http_client=client, max_retries=0
        )


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """`(event name, data)` of each SSE event."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event"), fields["data"]))
    return events


def _fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


async def test_chat_completion_parses_with_the_openai_sdk(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="gpt-test", messages=HELLO)

    assert completion.model == "gpt-test"
    assert completion.choices[0].message.content == " ".join(WORDS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == math.ceil(len(b"Hello, mock!") / 4)
    assert completion.usage.completion_tokens == len(WORDS)
    assert completion.usage.total_tokens == 3 + len(WORDS)


async def test_max_tokens_cut_the_reply(oai: openai.AsyncOpenAI) -> None:
    short = await oai.chat.completions.create(model="m", messages=HELLO, max_tokens=3)
    newer = await oai.chat.completions.create(model="m", messages=HELLO, max_completion_tokens=2)

    assert short.choices[0].message.content == " ".join(WORDS[:3])
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert newer.usage is not None and newer.usage.completion_tokens == 2


async def test_chat_stream_without_include_usage_has_no_usage(
    http: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True}
    response = await http.post("/v1/chat/completions", json=body)

    events = sse_events(response.text)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == (None, "[DONE]")
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    stream = await oai.chat.completions.create(model="m", messages=HELLO, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == " ".join(WORDS)


async def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(
    http: httpx.AsyncClient,
) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True, "max_tokens": 4,
            "stream_options": {"include_usage": True}}  # fmt: skip
    response = await http.post("/v1/chat/completions", json=body)

    chunks = [orjson.loads(data) for _, data in sse_events(response.text)[:-1]]
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 3
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    content = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert content == ["Hello", " from", " the", " aigw"]


async def test_legacy_completions_and_their_stream(
    http: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    completion = await oai.completions.create(model="m", prompt="Say something", max_tokens=5)
    assert completion.choices[0].text == " ".join(WORDS[:5])
    assert completion.usage is not None and completion.usage.prompt_tokens == 4

    body = {
        "model": "m",
        "prompt": "Say",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await http.post("/v1/completions", json=body)
    last = sse_events(response.text)[-2][1]
    assert last.index('"usage"') < last.index('"choices":[]'), "usage before choices, as recorded"


async def test_embeddings_are_deterministic_in_float_and_base64(oai: openai.AsyncOpenAI) -> None:
    first = await oai.embeddings.create(model="e", input=["hello", "world"])  # base64 by default
    again = await oai.embeddings.create(model="e", input="hello", encoding_format="float")
    sized = await oai.embeddings.create(model="e", input="hello", dimensions=32)

    assert len(first.data) == 2
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert first.data[0].embedding != first.data[1].embedding
    assert len(sized.data[0].embedding) == 32
    assert first.usage.prompt_tokens == 4 and first.usage.total_tokens == 4


async def test_responses_api_plain_and_streamed(
    http: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    response = await oai.responses.create(model="m", input="Hi", instructions="Be brief")
    assert response.output_text == " ".join(WORDS)
    assert response.usage is not None and response.usage.input_tokens == math.ceil(10 / 4)

    events = [
        event async for event in await oai.responses.create(model="m", input="Hi", stream=True)
    ]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == len(WORDS)

    raw = await http.post("/v1/responses", json={"model": "m", "input": "Hi", "stream": True,
                                                  "max_output_tokens": 2})  # fmt: skip
    parsed = [(name, orjson.loads(data)) for name, data in sse_events(raw.text)]
    assert all(name == data["type"] for name, data in parsed), "event: lines name each event"
    assert "[DONE]" not in raw.text
    assert parsed[0][1]["response"]["usage"] is None
    assert parsed[-1][0] == "response.incomplete"
    assert parsed[-1][1]["response"]["usage"]["output_tokens"] == 2


async def test_anthropic_messages_parse_with_the_anthropic_sdk(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await claude.messages.create(model="claude-test", max_tokens=5, messages=HELLO)

    assert message.model == "claude-test"
    assert message.content[0].text == " ".join(WORDS[:5])  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 3 and message.usage.output_tokens == 5

    async with claude.messages.stream(model="c", max_tokens=100, messages=HELLO) as stream:
        assert await stream.get_final_text() == " ".join(WORDS)
        final = await stream.get_final_message()
    assert final.usage.output_tokens == len(WORDS)
    assert final.stop_reason == "end_turn"


async def test_anthropic_stream_is_padded_like_the_real_one(http: httpx.AsyncClient) -> None:
    body = {"model": "c", "max_tokens": 3, "messages": HELLO, "stream": True}
    response = await http.post("/v1/messages", json=body)

    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert any(data.endswith(" }") for _, data in events), "padding before the final brace"
    parsed = {name: orjson.loads(data) for name, data in events}
    assert parsed["message_start"]["message"]["usage"]["output_tokens"] == 1  # placeholder
    assert parsed["message_delta"]["usage"] == {"output_tokens": 3}
    assert "[DONE]" not in response.text


async def test_x_mock_status_answers_provider_style_errors(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        await oai.chat.completions.create(
            model="m", messages=HELLO, extra_headers={"x-mock-status": "429"}
        )
    assert raised.value.body["type"] == "rate_limit_error"  # type: ignore[index]

    with pytest.raises(anthropic.InternalServerError) as failed:
        await claude.messages.create(
            model="c", max_tokens=5, messages=HELLO, extra_headers={"x-mock-status": "529"}
        )
    body = failed.value.body
    assert body["type"] == "error"  # type: ignore[index]
    assert body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_x_mock_chunks_and_delays(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True}
    headers = {"x-mock-chunks": "30", "x-mock-chunk-delay-ms": "5", "x-mock-delay-ms": "50"}
    started = time.monotonic()
    response = await http.post("/v1/chat/completions", json=body, headers=headers)
    elapsed = time.monotonic() - started

    chunks = [orjson.loads(data) for _, data in sse_events(response.text)[:-1]]
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(words) == 30
    assert words[len(WORDS)] == f" {WORDS[0]}", "the sentence repeats"
    assert elapsed >= 0.05 + 32 * 0.005


async def test_requests_are_recorded_and_cleared(http: httpx.AsyncClient) -> None:
    await http.post(
        "/serving/v1/chat/completions?x=1",
        json={"model": "m", "messages": HELLO},
        headers={"Authorization": "Bearer sk-platform"},
    )
    await http.post("/v1/embeddings", content=b"not json")

    received = (await http.get("/_mock/requests")).json()["data"]
    assert [r["path"] for r in received] == ["/serving/v1/chat/completions", "/v1/embeddings"]
    assert received[0]["method"] == "POST" and received[0]["query"] == "x=1"
    assert received[0]["headers"]["authorization"] == "Bearer sk-platform"
    assert received[0]["body"] == {"model": "m", "messages": HELLO}
    assert received[1]["body"] == "not json"
    assert (await http.delete("/_mock/requests")).json() == {"deleted": 2}
    assert (await http.get("/_mock/requests")).json()["data"] == []


async def test_models_and_unknown_paths(
    http: httpx.AsyncClient, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    assert [model.id async for model in oai.models.list()]
    assert [model.id async for model in claude.models.list()]
    unknown = await http.post("/v1/files", json={"model": "m"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    missing_model = await http.post("/v1/chat/completions", json={"messages": HELLO})
    assert missing_model.status_code == 400


async def test_shapes_match_the_recordings(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    chat = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    recorded_chat = _fixture("openai-chat.json")
    assert chat.json().keys() == recorded_chat.keys()
    assert chat.json()["usage"].keys() == recorded_chat["usage"].keys()

    responses = await http.post("/v1/responses", json={"model": "m", "input": "Hi"})
    recorded = _fixture("openai-responses.json")
    assert responses.json().keys() <= recorded.keys()
    assert responses.json()["usage"].keys() == recorded["usage"].keys()

    message = await http.post(
        "/v1/messages", json={"model": "c", "max_tokens": 5, "messages": HELLO}
    )
    recorded_message = _fixture("anthropic-messages.json")
    assert message.json().keys() == recorded_message.keys()
    assert message.json()["usage"].keys() == recorded_message["usage"].keys()


def test_mock_server_runs_on_a_free_port_in_a_thread() -> None:
    with (
        MockServer() as mock,
        openai.OpenAI(base_url=f"{mock.url}/v1", api_key="k", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(model="m", messages=HELLO)
        assert completion.choices[0].message.content
        assert httpx.get(f"{mock.url}/_mock/requests").json()["data"][0]["path"] == (
            "/v1/chat/completions"
        )
        assert len(mock.requests()) == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{mock.url}/_mock/requests")
