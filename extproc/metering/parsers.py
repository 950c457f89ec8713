"""Usage parsers: fed a response body chunk by chunk, they settle one `Usage` at the end.

Every parser has `feed(chunk: bytes) -> None`, called with each response body message as
Envoy sends it (any split), and `finish() -> Usage`, called once at end of stream — or when the
stream closes without `end_of_stream` (ENVOY-NOTES #19), which settles whatever was reported
so far. `parser_for(api, streaming)` picks one; `api` names the upstream API the gateway called:

    openai_chat         POST /v1/chat/completions, and the OpenAI-compatible chat endpoints
                        of Azure, Groq, DeepSeek, OpenRouter and Gemini (`/v1beta/openai/`)
    openai_completions  POST /v1/completions (legacy)
    openai_embeddings   POST /v1/embeddings (never streamed)
    openai_responses    POST /v1/responses
    anthropic_messages  POST /v1/messages
    gemini              Gemini native generateContent / streamGenerateContent?alt=sse
    bedrock             Bedrock Converse / ConverseStream, InvokeModel[WithResponseStream]
                        (Anthropic models); streamed bodies are AWS eventstream, not SSE

A non-streamed body (and any error body, which carries no usage) is buffered and decoded once at
`finish`. A streamed body is framed as it arrives and only the events that can carry usage are
decoded: those where the usage key occurs other than as `"usage":null` (see `_sse`). The
provider-specific part is an extractor from `providers`.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from extproc.metering import providers
from extproc.metering._sse import SseFramer, event_data, usage_events
from extproc.metering.eventstream import BedrockStreamParser
from extproc.metering.usage import Tally, Usage

_EXTRACTORS: dict[str, providers.Extractor] = {
    "openai_chat": providers.openai_chat,
    "openai_completions": providers.openai_chat,
    "openai_embeddings": providers.openai_chat,
    "openai_responses": providers.openai_responses,
    "anthropic_messages": providers.anthropic,
    "gemini": providers.gemini,
    "bedrock": providers.bedrock,
}

API_NAMES = tuple(_EXTRACTORS)
USAGE_KEY = b'"usage"'
GEMINI_USAGE_KEY = b'"usageMetadata"'


class UsageParser(Protocol):
    """What the processor drives: every body chunk in order, then one settlement."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> Usage: ...


class JsonUsageParser:
    """A non-streamed body: buffered, decoded once at `finish` (a JSON array: each element)."""

    __slots__ = ("_body", "_extract")

    def __init__(self, extract: providers.Extractor) -> None:
        self._extract = extract
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._body += chunk

    def finish(self) -> Usage:
        tally = Tally()
        try:
            value = orjson.loads(self._body)
        except orjson.JSONDecodeError:
            return tally.usage()
        for item in value if isinstance(value, list) else (value,):
            self._extract(item, tally)
        return tally.usage()


# One event of a run that carries usage: its bounds in the run, and its decoded data.
MeteredEvent = tuple[int, int, Any]


class SseUsageParser:
    """A text/event-stream body: only the complete events that can carry usage are decoded."""

    __slots__ = ("_extract", "_framer", "_key", "_tally")

    def __init__(self, extract: providers.Extractor, usage_key: bytes = USAGE_KEY) -> None:
        self._extract = extract
        self._key = usage_key
        self._framer = SseFramer()
        self._tally = Tally()

    def feed(self, chunk: bytes) -> None:
        self.read(chunk)

    def read(self, chunk: bytes) -> tuple[bytes, int, list[MeteredEvent]]:
        """Frame and meter `chunk`; return `(buf, end, events)` for a rewriter.

        `buf[:end]` is the run of events `chunk` completes (`buf` is `chunk` itself when nothing
        was held back) and `events` are those of them that carry usage.
        """
        buf, end = self._framer.feed(chunk)
        return buf, end, self._meter(buf, end)

    def read_rest(self) -> tuple[bytes, list[MeteredEvent]]:
        """At end of stream: the held-back bytes, metered as a last (unterminated) event."""
        rest = self._framer.flush()
        return rest, self._meter(rest, len(rest))

    def _meter(self, buf: bytes, end: int) -> list[MeteredEvent]:
        events = []
        for start, stop in usage_events(buf, end, self._key):
            try:
                value = orjson.loads(event_data(buf[start:stop]))
            except orjson.JSONDecodeError:
                continue
            self._extract(value, self._tally)
            events.append((start, stop, value))
        return events

    def finish(self) -> Usage:
        self.read_rest()
        return self._tally.usage()


def parser_for(api: str, streaming: bool) -> UsageParser:
    """The parser for a response of `api` (one of `API_NAMES`), streamed or not.

    Raises ValueError for an unknown api, or for a streamed embeddings response.
    """
    extract = _EXTRACTORS.get(api)
    if extract is None or (streaming and api == "openai_embeddings"):
        raise ValueError(f"no usage parser for api {api!r} (streaming={streaming})")
    if not streaming:
        return JsonUsageParser(extract)
    if api == "bedrock":
        return BedrockStreamParser()
    return SseUsageParser(extract, GEMINI_USAGE_KEY if api == "gemini" else USAGE_KEY)
