"""The types of the request fields the gateway itself reads (API.md §4: wrong types are a 400
`invalid_request` naming the field), checked once the body is parsed and before any routing or
admission: a non-empty `model`, `messages` an array, the output limits positive integers,
`stream` a boolean and `stream_options` an object. Other fields are the provider's to judge."""

from __future__ import annotations

from typing import Any

from aigw.errors import GatewayError, invalid_request
from extproc.endpoints import Endpoint

_OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_WITH_MESSAGES = (Endpoint.CHAT_COMPLETIONS, Endpoint.MESSAGES)
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    bool: "a boolean",
    str: "a string",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def check_field_types(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """Raise `GatewayError` 400 for the first field of the wrong type; `model` is a string."""
    if not body["model"].strip():
        raise invalid_request("Invalid value for 'model': it must not be empty.", "model")
    messages = body.get("messages")
    if endpoint in _WITH_MESSAGES and messages is not None and not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    for name in _OUTPUT_LIMITS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong_type(name, "an integer", value)
        if value < 1:
            raise invalid_request(f"Invalid value for '{name}': it must be at least 1.", name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object", options)


def _wrong_type(name: str, expected: str, value: object) -> GatewayError:
    got = _JSON_TYPES.get(type(value), "another type")
    return invalid_request(f"Invalid type for '{name}': expected {expected}, but got {got}.", name)
