"""Anthropic-shaped answers of the mock provider: the Messages API, non-streamed and SSE.

The stream follows the real recordings: `event:` lines, a `ping`, `message_start` whose usage
has a placeholder `output_tokens: 1`, the cumulative output total in `message_delta`, no
`[DONE]`, and JSON objects padded with spaces before their final `}` as Anthropic's are — so a
meter that parses them naively breaks here and not in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from aigw.mock.text import Reply


def _usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _stop_reason(reply: Reply) -> str:
    return "max_tokens" if reply.truncated else "end_turn"


def message(model: str, reply: Reply, *, message_id: str | None = None) -> dict[str, Any]:
    return {
        "id": message_id or f"msg_mock{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": _usage(reply, reply.output_tokens),
    }


def _event(kind: str, data: dict[str, Any], padding: int = 0) -> bytes:
    payload = orjson.dumps(data)
    if padding:
        payload = payload[:-1] + b" " * padding + b"}"
    return f"event: {kind}\n".encode() + b"data: " + payload + b"\n\n"


def message_stream(model: str, reply: Reply) -> Iterator[bytes]:
    start = message(model, reply)
    start.update(content=[], stop_reason=None, usage=_usage(reply, 1))
    yield _event("message_start", {"type": "message_start", "message": start}, padding=8)
    block = {"type": "text", "text": ""}
    yield _event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": block},
        padding=11,
    )
    yield b'event: ping\ndata: {"type": "ping"}\n\n'
    for i, piece in enumerate(reply.pieces):
        delta = {"type": "text_delta", "text": piece}
        yield _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": delta},
            padding=i % 7,
        )
    yield _event("content_block_stop", {"type": "content_block_stop", "index": 0}, padding=8)
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        },
        padding=12,
    )
    yield _event("message_stop", {"type": "message_stop"}, padding=10)
