"""What Envoy and extproc pass each other as dynamic metadata, named once for both sides (and
`stream_not_asked`, the one reading of it that extproc and the bench's floor processor share).

Envoy copies, for extproc to read with the messages of a request (ext_proc's forwarding
namespaces; `aigw.envoy_config`):
- `aigw.request` / `stream`: the request body's `stream` field, read by Envoy's `json_to_metadata`
  filter before the request reaches extproc, so that the request-headers reply can already choose
  how the response body is sent (buffered in one message, or streamed);
- `aigw.response` / `status`, `content_type`: the response's `:status` and `content-type`, copied
  by Envoy's `header_to_metadata` filter, so that no response-headers message is needed.

Of the request's headers Envoy sends extproc only those it reads (`FORWARDED_REQUEST_HEADERS`
and every `x-aig-*` one): fewer to serialise, send and walk per request.

extproc emits, from its request-body reply, `aigw` / one entry per response header of
`RESPONSE_HEADERS`; Envoy adds each one present to the client's response (its value
`%DYNAMIC_METADATA(aigw:<name>)%`; an absent one adds nothing).
"""

from __future__ import annotations

from typing import Final

from envoy.config.core.v3.base_pb2 import Metadata

REQUEST_NAMESPACE: Final = "aigw.request"
STREAM_KEY: Final = "stream"
RESPONSE_NAMESPACE: Final = "aigw.response"
STATUS_KEY: Final = "status"
CONTENT_TYPE_KEY: Final = "content_type"
HEADERS_NAMESPACE: Final = "aigw"

FORWARDED_REQUEST_HEADERS: Final = (
    ":path",
    ":method",
    "x-request-id",
    "authorization",
    "x-api-key",
    "content-length",
)
GATEWAY_HEADER_PREFIX: Final = "x-aig-"

BYOK_HEADER: Final = "x-aig-byok"
CLAMP_HEADER: Final = "x-aig-max-tokens-clamped"
RESPONSE_HEADERS: Final = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    BYOK_HEADER,
    CLAMP_HEADER,
)
"""Every header extproc may add to a response that went to the provider."""


def stream_not_asked(metadata: Metadata) -> bool:
    """Whether the request's JSON body, as Envoy read it into `REQUEST_NAMESPACE`, does not ask
    for a stream (`"stream": false`, or no `stream` field). False when Envoy read nothing (a
    body that is not JSON): the caller then treats the answer as streamed, which meters either
    kind."""
    request = metadata.filter_metadata.get(REQUEST_NAMESPACE)
    if request is None or STREAM_KEY not in request.fields:
        return False
    stream = request.fields[STREAM_KEY]
    return stream.WhichOneof("kind") == "bool_value" and not stream.bool_value
