"""Usage metering: read the provider's own usage figures out of a response body as it streams.

    parser_for(api, streaming) -> UsageParser     feed(chunk) per body message, finish() -> Usage
    ChatStreamRewriter(strip_usage)               feed(chunk) -> bytes to forward now,
                                                  finish() -> (bytes still to forward, Usage)

Feed every response body message in order, the `end_of_stream` one included, then call
`finish()` once — also when the stream closes without `end_of_stream` (ENVOY-NOTES #19), which
settles whatever was reported so far. A rewriter's reply to the `end_of_stream` message carries
`feed(chunk) + finish()[0]`.

`Usage` is the normalised value settled at end of stream; `providers` documents what each
provider's figures mean and how they are mapped onto it. Modules:

    usage        Usage, and the Tally of last-reported fields that parsers write into
    providers    one extractor per upstream API: where the usage is, what it means
    parsers      JSON and SSE parsers, parser_for and the api names
    eventstream  the Bedrock (AWS eventstream) stream parser
    rewriter     the OpenAI chat/completions stream rewriter
    _sse         SSE framing shared by every SSE consumer
"""

from extproc.metering.eventstream import BedrockStreamParser
from extproc.metering.parsers import (
    API_NAMES,
    JsonUsageParser,
    SseUsageParser,
    UsageParser,
    parser_for,
)
from extproc.metering.rewriter import ChatStreamRewriter
from extproc.metering.usage import Usage

__all__ = [
    "API_NAMES",
    "BedrockStreamParser",
    "ChatStreamRewriter",
    "JsonUsageParser",
    "SseUsageParser",
    "Usage",
    "UsageParser",
    "parser_for",
]
