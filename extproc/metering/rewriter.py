"""The chat/completions stream as the client asked for it, metered on the way (API.md §4).

To meter a streamed OpenAI chat or legacy completions response the gateway may add
`stream_options.include_usage` to a request that did not ask for it. The provider then sends one
extra chunk, `"choices": []` with `usage`, before `data: [DONE]` — a chunk such a client does not
expect (`chunk.choices[0]` raises). `ChatStreamRewriter(strip_usage=True)` removes exactly that
event, bytes and blank line, and forwards every other byte unchanged and in order; it holds back
only an event that is not complete yet. With `strip_usage=False` (the client asked for usage, or
nothing was added) it only meters: `feed` returns the chunk it was given, never a copy.

A chunk with usage but also with choices (DeepSeek, Groq, an OpenRouter error chunk) is content
and is forwarded; so is a `"choices": []` chunk without usage (Azure's prompt-filter chunk).
`feed` returns the very object it was given whenever nothing in it changed, so the processor can
test `out is chunk` and leave Envoy's body untouched.
"""

from __future__ import annotations

from typing import Any

from extproc.metering import providers
from extproc.metering.parsers import MeteredEvent, SseUsageParser
from extproc.metering.usage import Usage


def _usage_only(value: Any) -> bool:
    """An OpenAI stream chunk that carries usage and no choices."""
    return (
        isinstance(value, dict)
        and value.get("choices") == []
        and isinstance(value.get("usage"), dict)
    )


def _without_usage_only(buf: bytes, end: int, events: list[MeteredEvent]) -> bytes:
    """`buf[:end]` without its usage-only events (`buf` itself if that is all of it)."""
    pieces: list[bytes] = []
    cut = 0
    for start, stop, value in events:
        if _usage_only(value):
            pieces.append(buf[cut:start])
            cut = stop
    if not pieces:
        return buf if end == len(buf) else buf[:end]
    pieces.append(buf[cut:end])
    return b"".join(pieces)


class ChatStreamRewriter:
    """Meters an OpenAI chat/completions SSE stream; optionally strips its usage-only chunk."""

    __slots__ = ("_meter", "_strip")

    def __init__(self, strip_usage: bool) -> None:
        self._meter = SseUsageParser(providers.openai_chat)
        self._strip = strip_usage

    def feed(self, chunk: bytes) -> bytes:
        """What to forward to the client now (`chunk` itself when nothing changed)."""
        if not self._strip:
            self._meter.feed(chunk)
            return chunk
        return _without_usage_only(*self._meter.read(chunk))

    def finish(self) -> tuple[bytes, Usage]:
        """At end of stream: the held-back bytes still to forward, and the metered usage."""
        rest = b""
        if self._strip:
            rest, events = self._meter.read_rest()
            rest = _without_usage_only(rest, len(rest), events)
        return rest, self._meter.finish()
