"""Normalisation of provider usage shapes the recordings do not show, and `parser_for`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.metering import (
    API_NAMES,
    BedrockStreamParser,
    JsonUsageParser,
    SseUsageParser,
    Usage,
    parser_for,
)


def billed(input: int, output: int, *, cached: int = 0, cache_write: int = 0) -> Usage:
    return Usage(input, cached, cache_write, output, reported=True)


def from_json(api: str, body: Any) -> Usage:
    parser = parser_for(api, streaming=False)
    parser.feed(body if isinstance(body, bytes) else orjson.dumps(body))
    return parser.finish()


def from_sse(api: str, *events: Any) -> Usage:
    parser = parser_for(api, streaming=True)
    for event in events:
        parser.feed(b"data: " + orjson.dumps(event) + b"\n\n")
    return parser.finish()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # OpenRouter (Anthropic behind it): prompt_tokens includes cache reads and writes.
        (
            {
                "prompt_tokens": 194,
                "completion_tokens": 2,
                "total_tokens": 196,
                "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 100},
            },
            billed(44, 2, cached=50, cache_write=100),
        ),
        # DeepSeek without prompt_tokens_details: its own cache-hit field.
        (
            {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 60},
            billed(40, 5, cached=60),
        ),
        ({"prompt_tokens": 9, "prompt_tokens_details": None}, billed(9, 0)),
        ({"prompt_tokens": "9", "completion_tokens": 1.5}, Usage()),
        (
            {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 8}},
            billed(0, 0, cached=8),
        ),
    ],
)
def test_openai_compatible_usage(usage: dict[str, Any], expected: Usage) -> None:
    assert from_json("openai_chat", {"usage": usage}) == expected


def test_responses_incomplete_event_is_metered() -> None:
    incomplete = {
        "type": "response.incomplete",
        "response": {"usage": {"input_tokens": 50, "output_tokens": 64}},
    }
    assert from_sse("openai_responses", incomplete) == billed(50, 64)


def test_anthropic_stream_cut_after_message_start_keeps_its_figures() -> None:
    start = {
        "type": "message_start",
        "message": {
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1}
        },
    }
    assert from_sse("anthropic_messages", start) == billed(12, 1, cached=3)


def test_gemini_cached_and_tool_prompt_tokens() -> None:
    chunk = {
        "usageMetadata": {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 800,
            "toolUsePromptTokenCount": 40,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 5,
        }
    }
    assert from_sse("gemini", chunk) == billed(240, 25, cached=800)


def test_gemini_json_array_body_takes_the_last_snapshot() -> None:
    chunks = [
        {"usageMetadata": {"promptTokenCount": 15}},
        {"usageMetadata": {"promptTokenCount": 13, "candidatesTokenCount": 8}},
    ]
    assert from_json("gemini", chunks) == billed(13, 8)


def test_bedrock_converse_cache_fields_and_invocation_metrics() -> None:
    converse = {
        "usage": {
            "inputTokens": 4,
            "outputTokens": 9,
            "cacheReadInputTokens": 300,
            "cacheWriteInputTokens": 20,
        }
    }
    assert from_json("bedrock", converse) == billed(4, 9, cached=300, cache_write=20)
    stop = {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 4,
            "outputTokenCount": 9,
            "cacheReadInputTokenCount": 300,
            "cacheWriteInputTokenCount": 0,
        },
    }
    assert from_json("bedrock", stop) == billed(4, 9, cached=300)


@pytest.mark.parametrize("body", [b"", b"upstream connect error", b"[1, 2]", b'"usage"'])
def test_bodies_that_are_not_usage(body: bytes) -> None:
    for api in API_NAMES:
        assert from_json(api, body) == Usage()


def test_parser_for() -> None:
    assert isinstance(parser_for("openai_embeddings", streaming=False), JsonUsageParser)
    assert isinstance(parser_for("gemini", streaming=True), SseUsageParser)
    assert isinstance(parser_for("bedrock", streaming=True), BedrockStreamParser)
    with pytest.raises(ValueError, match="openai_embeddings"):
        parser_for("openai_embeddings", streaming=True)
    with pytest.raises(ValueError, match="cohere"):
        parser_for("cohere", streaming=False)
