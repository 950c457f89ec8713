"""OpenAI-shaped answers of the mock provider: chat completions, legacy completions,
embeddings and the Responses API, non-streamed bodies and SSE events shaped like the real
recordings in shared/fixtures/providers/ (`usage: null` on every chunk and a final
`choices: []` usage chunk only with `stream_options.include_usage`; Responses events with
`event:` lines and no `[DONE]`)."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from aigw.mock.text import Reply, count_tokens

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _chat_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(reply: Reply) -> str:
    return "length" if reply.truncated else "stop"


def chat_completion(model: str, reply: Reply) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
    return {
        "id": _id("chatcmpl-mock"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(reply)}
        ],
        "usage": _chat_usage(reply),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def chat_completion_stream(model: str, reply: Reply, include_usage: bool) -> Iterator[bytes]:
    base = {
        "id": _id("chatcmpl-mock"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if include_usage else {}
        return sse({**base, "choices": [choice], **extra, "obfuscation": "mock"})

    yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
    for piece in reply.pieces:
        yield chunk({"content": piece}, None)
    yield chunk({}, _finish(reply))
    if include_usage:
        yield sse({**base, "choices": [], "usage": _chat_usage(reply), "obfuscation": "mock"})
    yield DONE


def _completion_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.total_tokens,
    }


def completion(model: str, reply: Reply) -> dict[str, Any]:
    choice = {"text": reply.text, "index": 0, "logprobs": None, "finish_reason": _finish(reply)}
    return {
        "id": _id("cmpl-mock"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _completion_usage(reply),
    }


def completion_stream(model: str, reply: Reply, include_usage: bool) -> Iterator[bytes]:
    head = {"id": _id("cmpl-mock"), "object": "text_completion", "created": int(time.time())}
    usage_null = {"usage": None} if include_usage else {}
    last = len(reply.pieces) - 1
    for i, piece in enumerate(reply.pieces):
        finish = _finish(reply) if i == last else None
        choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}
        yield sse({**head, "choices": [choice], "model": model, **usage_null})
    if include_usage:  # as recorded: "usage" before "choices": []
        yield sse({**head, "model": model, "usage": _completion_usage(reply), "choices": []})
    yield DONE


def embeddings(model: str, body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) or _is_tokens(raw) else list(raw or [])
    dimensions = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 8
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        tokens += len(item) if _is_tokens(item) else count_tokens(str(item))
        vector = _vector(orjson.dumps(item), dimensions)
        packed = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append(
            {"object": "embedding", "index": index, "embedding": packed if as_base64 else vector}
        )
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _vector(seed: bytes, dimensions: int) -> list[float]:
    """A deterministic unit-free vector in [-1, 1) from the input's hash."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values += [(b - 128) / 128 for b in digest]
        counter += 1
    return values[:dimensions]


def _response_usage(reply: Reply) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.total_tokens,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "content": content,
            "role": "assistant"}  # fmt: skip


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def response(
    model: str,
    body: dict[str, Any],
    reply: Reply,
    *,
    done: bool = True,
    response_id: str | None = None,
    item_id: str | None = None,
) -> dict[str, Any]:
    """The Responses API object; `done=False` is its in-progress form of the stream's start."""
    status = ("incomplete" if reply.truncated else "completed") if done else "in_progress"
    item = _message_item(item_id or _id("msg_mock"), reply.text, "completed")
    return {
        "id": response_id or _id("resp_mock"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [item] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default" if done else "auto",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _response_usage(reply) if done else None,
        "user": None,
        "metadata": {},
    }


def response_stream(model: str, body: dict[str, Any], reply: Reply) -> Iterator[bytes]:
    response_id, item_id = _id("resp_mock"), _id("msg_mock")
    start = response(model, body, reply, done=False, response_id=response_id, item_id=item_id)
    final = response(model, body, reply, response_id=response_id, item_id=item_id)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": start}),
        ("response.in_progress", {"response": start}),
        ("response.output_item.added",
         {"output_index": 0, "item": _message_item(item_id, "", "in_progress")}),
        ("response.content_part.added", {**where, "part": _text_part("")}),
        *[("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
          for piece in reply.pieces],
        ("response.output_text.done", {**where, "text": reply.text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": _text_part(reply.text)}),
        ("response.output_item.done",
         {"output_index": 0, "item": _message_item(item_id, reply.text, "completed")}),
        (f"response.{final['status']}", {"response": final}),
    ]  # fmt: skip
    for number, (kind, fields) in enumerate(events):
        yield sse({"type": kind, "sequence_number": number, **fields}, event=kind)
