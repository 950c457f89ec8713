"""What a request can cost at most: an upper bound on its input tokens and the output tokens it
asks for, read from the body once; and the field that carries the output limit upstream.

Input bound (documented in docs/metering.md): every provider tokenizer turns at least one UTF-8
byte into each token, so the request body's byte count bounds the prompt, messages, tools and
system text together. Images are priced by size, not bytes: each image part adds
`IMAGE_TOKEN_ALLOWANCE`. Providers add hidden prompt text (tool-use instructions), covered by
`PROVIDER_PROMPT_ALLOWANCE`.

Output: the request's own limit (`max_completion_tokens` or `max_tokens` for chat,
`max_tokens` for completions and messages, `max_output_tokens` for responses); without one, the
model's configured maximum or `DEFAULT_OUTPUT_TOKENS`. The gateway always sends the granted
limit upstream, so no answer can outgrow what was reserved.
"""

from __future__ import annotations

from typing import Any

from extproc.endpoints import Endpoint

IMAGE_TOKEN_ALLOWANCE = 25_600
PROVIDER_PROMPT_ALLOWANCE = 1_024
DEFAULT_OUTPUT_TOKENS = 32_768
MIN_USEFUL_OUTPUT_TOKENS = 16
_IMAGE_MARKERS = (b'"image_url"', b'"input_image"', b'"type":"image"', b'"type": "image"')

_OUTPUT_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT_COMPLETIONS: ("max_completion_tokens", "max_tokens"),
    Endpoint.COMPLETIONS: ("max_tokens",),
    Endpoint.RESPONSES: ("max_output_tokens",),
    Endpoint.MESSAGES: ("max_tokens",),
}


def input_token_bound(raw_body: bytes) -> int:
    images = sum(raw_body.count(marker) for marker in _IMAGE_MARKERS)
    return len(raw_body) + images * IMAGE_TOKEN_ALLOWANCE + PROVIDER_PROMPT_ALLOWANCE


def requested_output_tokens(
    endpoint: Endpoint, body: dict[str, Any], model_maximum: int | None
) -> tuple[int, str | None]:
    """(the output tokens the request may produce, the body field that says so or None)."""
    fields = _OUTPUT_FIELDS.get(endpoint)
    if fields is None:
        return 0, None
    for name in fields:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    return model_maximum or DEFAULT_OUTPUT_TOKENS, None


def output_field(endpoint: Endpoint, provider: str, present: str | None) -> str | None:
    """The field to write the granted limit into: the one the client used, else the endpoint's
    own (`max_completion_tokens` for OpenAI chat, `max_tokens` for other OpenAI-compatible
    servers, which may not know the newer name)."""
    if present is not None:
        return present
    fields = _OUTPUT_FIELDS.get(endpoint)
    if fields is None:
        return None
    if endpoint is Endpoint.CHAT_COMPLETIONS and provider != "openai":
        return "max_tokens"
    return fields[0]
