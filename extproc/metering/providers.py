"""Per-provider extractors: where each API puts its usage, and what its figures mean.

An extractor takes one decoded JSON value (a whole non-streamed body, one SSE event's data, one
Bedrock frame's payload) and records the usage it carries into a `Tally`; a value without usage
records nothing. Anything that is not the expected shape is ignored, never raised.

Normalisation to `Usage` (input = billed at the input rate, without cache reads or writes):

OpenAI chat / completions / embeddings, and the OpenAI-compatible APIs (Azure, Groq, DeepSeek,
OpenRouter, Gemini's `/openai/` endpoint) — `usage`, or Groq's `x_groq.usage` when there is no
top-level one; in a stream, on whichever chunk carries it (the `"choices":[]` chunk for OpenAI,
the `finish_reason` chunk for Groq and DeepSeek, an `error` chunk for OpenRouter):
    cached       = prompt_tokens_details.cached_tokens (DeepSeek: else prompt_cache_hit_tokens)
    cache_write  = prompt_tokens_details.cache_write_tokens (OpenRouter)
    input        = prompt_tokens - cached - cache_write   (prompt_tokens includes both)
    output       = completion_tokens (reasoning included), or total_tokens - prompt_tokens when
                   that is larger: Gemini's OpenAI-compatible endpoint leaves its thinking tokens
                   out of completion_tokens and reports them only in total_tokens.
    A usage object without token counts (audio transcription's `{"type":"duration"}`) is none.

OpenAI Responses — `usage` of the body, or `response.usage` of `response.completed` (also
`response.incomplete`/`response.failed`; earlier events carry `"usage":null`):
    input = input_tokens - input_tokens_details.cached_tokens; cached = that cached_tokens;
    output = output_tokens (reasoning included).

Anthropic Messages — `usage` of the body or of `message_delta`, `message.usage` of
`message_start`. input_tokens already excludes cache_read_input_tokens (→ cached) and
cache_creation_input_tokens (→ cache_write). Each field is taken as last reported: message_start's
output_tokens is a placeholder that message_delta's cumulative figure replaces, and newer
message_deltas repeat (or, with server tools, revise upwards) the input and cache figures, so
start and delta are never added. cache_creation's 5-minute/1-hour split is not kept: both are
cache_write. With compaction, `usage.iterations[]` lists every sampling
pass and the top-level figures cover only the last one: the billed figures are the sums over
the iterations.

Gemini native (generateContent, streamGenerateContent) — `usageMetadata`, a cumulative snapshot in
every chunk whose values may also shrink, so the last snapshot wins (absent counts are 0):
    input = promptTokenCount + toolUsePromptTokenCount - cachedContentTokenCount;
    cached = cachedContentTokenCount; output = candidatesTokenCount + thoughtsTokenCount.

Bedrock — Converse `usage` / ConverseStream `metadata.usage` in camelCase (inputTokens already
excludes cacheReadInputTokens and cacheWriteInputTokens); InvokeModel bodies and the decoded
`bytes` events of InvokeModelWithResponseStream are Anthropic's (above), and the last stream
event repeats the counts in `amazon-bedrock-invocationMetrics` (inputTokenCount, outputTokenCount,
cacheRead/cacheWriteInputTokenCount), taken as last reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from extproc.metering.usage import Tally, as_int

Extractor = Callable[[Any, Tally], None]


def _nested(obj: Any, outer: str, inner: str) -> Any:
    """`obj[outer][inner]`, or None when either level is missing or not an object."""
    value = obj.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def openai_chat(obj: Any, tally: Tally) -> None:
    """Chat/completions/embeddings body or stream chunk (Groq's `x_groq.usage` included)."""
    if not isinstance(obj, dict):
        return
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        usage = _nested(obj, "x_groq", "usage")
        if not isinstance(usage, dict):
            return
    prompt = as_int(usage.get("prompt_tokens"))
    completion = as_int(usage.get("completion_tokens"))
    if prompt is None and completion is None:
        return
    prompt = prompt or 0
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = as_int(details.get("cached_tokens"))
        cache_write = as_int(details.get("cache_write_tokens")) or 0
    else:
        cached, cache_write = None, 0
    if cached is None:
        cached = as_int(usage.get("prompt_cache_hit_tokens")) or 0
    output = completion or 0
    total = as_int(usage.get("total_tokens"))
    if total is not None and total - prompt > output:
        output = total - prompt
    tally.record(
        input=prompt - cached - cache_write,
        cached=cached,
        cache_write=cache_write,
        output=output,
    )


def openai_responses(obj: Any, tally: Tally) -> None:
    """Responses body, or a streamed event whose `response` carries usage."""
    if not isinstance(obj, dict):
        return
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        usage = _nested(obj, "response", "usage")
        if not isinstance(usage, dict):
            return
    total_input = as_int(usage.get("input_tokens"))
    output = as_int(usage.get("output_tokens"))
    if total_input is None and output is None:
        return
    cached = as_int(_nested(usage, "input_tokens_details", "cached_tokens")) or 0
    tally.record(
        input=(total_input or 0) - cached, cached=cached, cache_write=0, output=output or 0
    )


_ANTHROPIC_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)


def _anthropic_usage(usage: dict[str, Any], tally: Tally) -> None:
    iterations = usage.get("iterations")
    if isinstance(iterations, list) and iterations:
        sums = [0, 0, 0, 0]
        for step in iterations:
            if isinstance(step, dict):
                for i, field in enumerate(_ANTHROPIC_FIELDS):
                    sums[i] += as_int(step.get(field)) or 0
        values: list[int | None] = list(sums)
    else:
        values = [as_int(usage.get(field)) for field in _ANTHROPIC_FIELDS]
    tally.record(input=values[0], cached=values[1], cache_write=values[2], output=values[3])


def anthropic(obj: Any, tally: Tally) -> None:
    """Messages body, `message_start` (`message.usage`) or `message_delta` (`usage`)."""
    if not isinstance(obj, dict):
        return
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        usage = _nested(obj, "message", "usage")
        if not isinstance(usage, dict):
            return
    _anthropic_usage(usage, tally)


def gemini(obj: Any, tally: Tally) -> None:
    """generateContent body or streamGenerateContent chunk: `usageMetadata`, a full snapshot."""
    if not isinstance(obj, dict):
        return
    meta = obj.get("usageMetadata")
    if not isinstance(meta, dict):
        return
    prompt = as_int(meta.get("promptTokenCount"))
    candidates = as_int(meta.get("candidatesTokenCount"))
    if prompt is None and candidates is None:
        return
    cached = as_int(meta.get("cachedContentTokenCount")) or 0
    tool_prompt = as_int(meta.get("toolUsePromptTokenCount")) or 0
    thoughts = as_int(meta.get("thoughtsTokenCount")) or 0
    tally.record(
        input=(prompt or 0) + tool_prompt - cached,
        cached=cached,
        cache_write=0,
        output=(candidates or 0) + thoughts,
    )


def bedrock(obj: Any, tally: Tally) -> None:
    """Converse body or `metadata` event, or an Anthropic body/event from InvokeModel."""
    if not isinstance(obj, dict):
        return
    usage = obj.get("usage")
    if isinstance(usage, dict) and ("inputTokens" in usage or "outputTokens" in usage):
        tally.record(
            input=as_int(usage.get("inputTokens")),
            cached=as_int(usage.get("cacheReadInputTokens")) or 0,
            cache_write=as_int(usage.get("cacheWriteInputTokens")) or 0,
            output=as_int(usage.get("outputTokens")),
        )
    else:
        anthropic(obj, tally)
    metrics = obj.get("amazon-bedrock-invocationMetrics")
    if isinstance(metrics, dict):
        tally.record(
            input=as_int(metrics.get("inputTokenCount")),
            cached=as_int(metrics.get("cacheReadInputTokenCount")),
            cache_write=as_int(metrics.get("cacheWriteInputTokenCount")),
            output=as_int(metrics.get("outputTokenCount")),
        )
