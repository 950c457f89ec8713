"""What the benchmark sends and what its fake provider answers: a ~200-byte chat request, a
realistic OpenAI chat completion WITH a `usage` object (the gateway meters it), and the SSE
chunks of a streamed completion ending in a usage-only chunk (`"choices": []`) and `[DONE]`.

Every configuration gets the same bytes except the `model` string, which each one names its own
way (`gpt-5.4-mini`, `openai/gpt-5.4-mini`, a LiteLLM alias…). The SSE source reads the model:
a name containing `paced` is streamed with a pause between chunks, any other as fast as it can.
"""

from __future__ import annotations

import orjson

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a haiku about recursion in programming."},
]
MAX_TOKENS = 256
PACED_MARKER = "paced"
COMPLETION_ID = "chatcmpl-BenchAigw7Qm2v5Lr0Xk3Yh9Tn4Wd6"
CREATED = 1764201600
FINGERPRINT = "fp_b3f2c1d4e5"
PROMPT_TOKENS = 26
ANSWER = (
    "Code calls itself back,\nA mirror inside mirrors,\nBase case breaks the spell. "
    "Recursion trades loops for trust: each call believes the next one finishes."
)


def chat_request(model: str, *, stream: bool) -> bytes:
    """The request body every configuration receives (only `model` differs)."""
    body: dict[str, object] = {"model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS}
    if stream:
        # The fake provider always ends a stream with its usage chunk, as OpenAI does when it is
        # asked for: asking makes that true of every configuration. Without it the gateway
        # strips the chunk (API.md §4), and the client would see a gap of two chunk intervals
        # before `[DONE]` — once a stream, 2 % of the gaps, so the inter-chunk p99.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _usage(completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion() -> bytes:
    """A non-streamed OpenAI chat completion (~900 bytes) with its usage."""
    return orjson.dumps(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": "gpt-5.4-mini-2026-03-17",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": ANSWER,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(len(ANSWER.split())),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def _chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-5.4-mini-2026-03-17",
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def sse_events(chunks: int) -> list[bytes]:
    """The SSE events of one streamed completion: `chunks` content chunks (the first carries the
    role, the last the finish reason), then the usage-only chunk, then `data: [DONE]`."""
    words = ANSWER.split()
    events: list[dict[str, object]] = []
    for index in range(chunks):
        delta: dict[str, object] = {"content": " " + words[index % len(words)]}
        if index == 0:
            delta = {"role": "assistant", "content": "", "refusal": None}
        finish = "stop" if index == chunks - 1 else None
        events.append(_chunk(delta if finish is None else {}, finish))
    usage = _chunk({}, None)
    usage["choices"] = []
    usage["usage"] = _usage(chunks)
    events.append(usage)
    encoded = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events]
    return [*encoded, b"data: [DONE]\n\n"]
