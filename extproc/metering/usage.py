"""The metered value of one response, and the running tally it is settled from.

`Usage` is what the gateway bills: four token counts in one normalised meaning for every
provider (the per-provider mapping is documented in `providers`), plus `reported`, which says
whether the provider reported usage at all. A response without usage (a provider error, a
stream the provider was not asked to meter, a stream cut off before its usage arrived) gives
`Usage()`, `reported=False`; what to charge then is the caller's decision, not the parser's.

`Tally` is the per-response accumulator the parsers write into as usage objects arrive. It keeps,
for each field, the last value any usage object reported (`None` = never reported), because
providers repeat and revise their figures in a stream (Anthropic's `message_delta`, Gemini's
cumulative `usageMetadata`): values are replaced, never added. Each extractor decides which
fields one usage object reports; the tally only remembers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one response, normalised across providers.

    input_tokens         prompt tokens billed at the input rate: excludes cache reads and writes
    cached_input_tokens  prompt tokens read from the provider's prompt cache
    cache_write_tokens   prompt tokens written to the prompt cache (Anthropic cache_creation)
    output_tokens        generated tokens, reasoning/thinking included
    reported             the provider reported usage at all
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reported: bool = False


def as_int(value: Any) -> int | None:
    """`value` if it is a JSON integer, else None (absent, null, a float timing, a string)."""
    return value if type(value) is int else None


class Tally:
    """The last reported value of each usage field of one response (None = not reported)."""

    __slots__ = ("cache_write", "cached", "input", "output")

    def __init__(self) -> None:
        self.input: int | None = None
        self.cached: int | None = None
        self.cache_write: int | None = None
        self.output: int | None = None

    def record(
        self,
        *,
        input: int | None = None,
        cached: int | None = None,
        cache_write: int | None = None,
        output: int | None = None,
    ) -> None:
        """Replace the fields this usage object reports; leave the others as they were.

        A negative input (a provider whose cached figure exceeds its prompt figure) counts as 0.
        """
        if input is not None:
            self.input = max(input, 0)
        if cached is not None:
            self.cached = cached
        if cache_write is not None:
            self.cache_write = cache_write
        if output is not None:
            self.output = output

    def usage(self) -> Usage:
        """The value to bill: every field as last reported, absent fields 0."""
        fields = (self.input, self.cached, self.cache_write, self.output)
        return Usage(*(value or 0 for value in fields), reported=fields != (None,) * 4)
