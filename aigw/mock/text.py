"""The mock provider's deterministic text and token counts.

input tokens   ceil(UTF-8 bytes of every text in the request / 4), at least 1: never more
               than the byte count, the upper bound the gateway reserves against
output tokens  one per word of a fixed sentence (repeated to `x-mock-chunks` words when that
               header is set), cut to the request's max_tokens / max_completion_tokens /
               max_output_tokens; one word is one streamed chunk
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SENTENCE = (
    "Hello from the aigw mock provider: this deterministic reply has the same words "
    "every time, so tests can count them."
)
WORDS = tuple(SENTENCE.split())
_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True)
class Reply:
    """What the mock answers: the streamed pieces and the token counts."""

    pieces: tuple[str, ...]
    input_tokens: int
    truncated: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def prompt_text(body: dict[str, Any]) -> str:
    """Every text a request carries (messages, system, instructions, input, prompt), joined."""
    parts: list[str] = []
    for field in ("system", "instructions", "prompt", "input", "messages"):
        _collect(body.get(field), parts)
    return "\n".join(parts)


def make_reply(body: dict[str, Any], chunks: int | None) -> Reply:
    wanted = chunks if chunks is not None else len(WORDS)
    limit = next((body[f] for f in _LIMIT_FIELDS if isinstance(body.get(f), int)), None)
    count = max(1, min(wanted, limit)) if limit is not None else max(1, wanted)
    words = [WORDS[i % len(WORDS)] for i in range(count)]
    pieces = tuple(word if i == 0 else f" {word}" for i, word in enumerate(words))
    return Reply(pieces, count_tokens(prompt_text(body)), truncated=count < wanted)


def _collect(value: Any, parts: list[str]) -> None:
    """Strings anywhere in a prompt value: plain strings, lists, `content`/`text` of parts."""
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, parts)
    elif isinstance(value, dict):
        for key in ("content", "text"):
            _collect(value.get(key), parts)
