"""Per provider, the request-body reply that sends a request on to it, built once at start-up.

The reply sets `x-aig-provider` (Envoy routes on it, so the route cache is cleared: ENVOY-NOTES
#3), drops the client's gateway key and sets the provider's own auth: `authorization: Bearer`,
or `x-api-key` plus `anthropic-version` when the client sent none. A rewritten body also needs
its new `content-length` in the same reply, or Envoy answers 500 (ENVOY-NOTES #14). Each request's
copy also carries the response headers Envoy adds for it (rate limits, BYOK, clamp) as metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    ProcessingResponse,
)

from aigw.config import ProviderConfig
from aigw.processing_metadata import HEADERS_NAMESPACE
from extproc.messages import ADD_IF_ABSENT, header

PROVIDER_HEADER = "x-aig-provider"
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A configured provider; `forward` is None when the gateway holds no key for it."""

    name: str
    forward: ProcessingResponse | None = field(repr=False)


def forward_request(
    forward: ProcessingResponse,
    response_headers: dict[str, str],
    body: bytes | None = None,
    set_content_length: bool = False,
) -> ProcessingResponse:
    """A copy of `forward` that also emits the headers Envoy is to add to the client's response
    (`aigw.processing_metadata`) and, unless `body` is None, replaces the request body."""
    reply = ProcessingResponse()
    reply.CopyFrom(forward)
    emitted = reply.dynamic_metadata.fields[HEADERS_NAMESPACE].struct_value.fields
    for name, value in response_headers.items():
        emitted[name].string_value = value
    if body is not None:
        common = reply.request_body.response
        common.body_mutation.body = body
        if set_content_length:
            common.header_mutation.set_headers.append(header("content-length", str(len(body))))
    return reply


def build_upstreams(providers: Mapping[str, ProviderConfig]) -> dict[str, Upstream]:
    return {
        name: Upstream(
            name, forward_reply(name, provider, provider.api_key) if provider.api_key else None
        )
        for name, provider in providers.items()
    }


def forward_reply(name: str, provider: ProviderConfig, api_key: str) -> ProcessingResponse:
    """The reply that routes to `name` with `api_key` (the platform's, or a parent's BYOK key)
    in the provider's auth header."""
    set_headers = [header(PROVIDER_HEADER, name)]
    if provider.auth == "bearer":
        set_headers.append(header("authorization", f"Bearer {api_key}"))
        remove = ["x-api-key"]
    else:
        set_headers.append(header("x-api-key", api_key))
        set_headers.append(header("anthropic-version", ANTHROPIC_VERSION, ADD_IF_ABSENT))
        remove = ["authorization"]
    mutation = HeaderMutation(set_headers=set_headers, remove_headers=remove)
    common = CommonResponse(header_mutation=mutation, clear_route_cache=True)
    return ProcessingResponse(request_body=BodyResponse(response=common))
