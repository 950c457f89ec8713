"""One ext_proc stream is one HTTP request: a `Processor` per stream, one method per phase.

- request headers: match the endpoint, drop client-sent `x-aig-*` headers (reading the request's
  own tags from `x-aig-tags` first, see `request_tags`), authenticate the gateway key (401);
  GET /v1/models is answered here. The reply chooses how the response body will reach us: whole
  in one message for a non-streamed answer (Envoy read the body's `stream` field for us, see
  `aigw.processing_metadata`), streamed otherwise.
- request body (buffered): parse the JSON once, resolve and check the model, admit (rate limits
  and spend cap, see `admission`), ask for streamed usage, then send the request on to its
  provider with the provider's auth (see `upstreams`), with the rate-limit, clamp and
  `x-aig-byok` headers that Envoy adds to the response.
- response headers: never sent to us; Envoy passes their status and content type as metadata.
- response body: on its first message note the status and pick the meter (SSE or JSON); meter
  it (see `metering`), strip the usage chunk the client did not ask for, and settle at its end
  (in the background: the client's answer does not wait for Redis); `on_stream_closed` settles
  a request whose stream was cut off.

Phase methods raise `GatewayError`; the server turns it into the client's answer.
"""

from __future__ import annotations

from typing import Any

import orjson
from envoy.config.core.v3.base_pb2 import Metadata
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingResponse,
)

from aigw.errors import invalid_api_key, invalid_request, model_not_allowed, provider_not_configured
from aigw.keys import hash_key, looks_like_key
from aigw.policy import KeyPolicy
from aigw.processing_metadata import (
    BYOK_HEADER,
    CLAMP_HEADER,
    CONTENT_TYPE_KEY,
    GATEWAY_HEADER_PREFIX,
    RESPONSE_NAMESPACE,
    STATUS_KEY,
    stream_not_asked,
)
from extproc.admission import Ticket
from extproc.endpoints import Endpoint, match_endpoint
from extproc.gateway import Gateway
from extproc.messages import (
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_TRAILERS,
    continue_request_headers,
    immediate_response,
    replace_response_body,
)
from extproc.metering import ChatStreamRewriter, Usage, UsageParser, parser_for
from extproc.request_tags import TAGS_HEADER, parse_tags_header, request_tags
from extproc.request_types import check_field_types
from extproc.settlement import Outcome, RequestFacts, settle_request
from extproc.upstreams import forward_request

_ANTHROPIC = "anthropic"
_METERING_API = {
    Endpoint.CHAT_COMPLETIONS: "openai_chat",
    Endpoint.COMPLETIONS: "openai_completions",
    Endpoint.EMBEDDINGS: "openai_embeddings",
    Endpoint.RESPONSES: "openai_responses",
    Endpoint.MESSAGES: "anthropic_messages",
}
_REWRITABLE_STREAMS = (Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS)
# Answers of bounded size, taken whole when not streamed (an embeddings answer can be larger
# than any buffer: always streamed).
_WHOLE_ANSWERS = frozenset(
    (Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES)
)
_NO_METADATA = Metadata()
_JSON_TYPES = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}


class Processor:
    """The state of one request across its phases."""

    __slots__ = (
        "_content_length",
        "_endpoint",
        "_facts",
        "_gateway",
        "_meter",
        "_policy",
        "_status",
        "_strip_usage",
        "_tags",
        "_ticket",
        "metadata",
        "request_id",
    )

    _endpoint: Endpoint
    _policy: KeyPolicy
    _facts: RequestFacts

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.metadata = _NO_METADATA
        """What Envoy forwarded with the current message (the server sets it; only read)."""
        self.request_id = ""
        self._content_length = False
        self._ticket: Ticket | None = None
        self._meter: UsageParser | ChatStreamRewriter | None = None
        self._strip_usage = False
        self._status = 0
        self._tags: tuple[str, ...] = ()

    async def request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        method = path = ""
        authorization = api_key = None
        foreign: list[str] = []
        tag_values: list[bytes] = []
        for entry in message.headers.headers:
            name = entry.key
            if name == ":path":
                path = entry.raw_value.decode("latin-1")
            elif name == ":method":
                method = entry.raw_value.decode("latin-1")
            elif name == "x-request-id":
                self.request_id = entry.raw_value.decode("latin-1")
            elif name == "authorization":
                authorization = entry.raw_value
            elif name == "x-api-key":
                api_key = entry.raw_value
            elif name == "content-length":
                self._content_length = True
            elif name.startswith(GATEWAY_HEADER_PREFIX):
                foreign.append(name)
                if name == TAGS_HEADER:
                    tag_values.append(entry.raw_value)

        endpoint, model = match_endpoint(method, path)
        policy = await self._authenticate(authorization, api_key)
        if endpoint is Endpoint.LIST_MODELS:
            return self._ok(self._gateway.listing.list_body(policy))
        if endpoint is Endpoint.RETRIEVE_MODEL:
            return self._ok(self._gateway.listing.model_body(policy, model))
        if message.end_of_stream:
            raise invalid_request("The request has no body: send a JSON object with a 'model'.")
        self._tags = parse_tags_header(tag_values)
        self._endpoint = endpoint
        self._policy = policy
        return continue_request_headers(foreign, self._answer_is_whole(endpoint))

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        body = _parse_body(message.body)
        requested = body.get("model")
        if requested is None:
            raise invalid_request("Missing required parameter: 'model'.", "model")
        if not isinstance(requested, str):
            kind = _JSON_TYPES.get(type(requested), "a number")
            raise invalid_request(
                f"Invalid type for 'model': expected a string, but got {kind}.", "model"
            )
        check_field_types(self._endpoint, body)

        gateway = self._gateway
        route = gateway.catalog.resolve(requested)
        if not self._policy.allows(route.canonical):
            raise model_not_allowed(route.canonical)
        if self._endpoint is Endpoint.MESSAGES and route.provider != _ANTHROPIC:
            raise invalid_request(
                f"/v1/messages serves Anthropic models only, not '{route.canonical}'; "
                "use /v1/chat/completions or /v1/responses for it.",
                "model",
            )
        forward, byok = await self._upstream(route.provider)

        policy = self._policy
        ticket, changed = await gateway.admission.admit(
            policy, route, self._endpoint, message.body, body, self.request_id, byok=byok
        )
        self._ticket = ticket
        stream = body.get("stream") is True
        if stream and self._endpoint in _REWRITABLE_STREAMS:
            changed |= self._ask_for_streamed_usage(body)
        self._facts = RequestFacts(
            request_id=self.request_id,
            parent_id=policy.parent_id,
            sub_account_id=policy.sub_account_id,
            tags=request_tags(policy.default_tag, self._tags),
            model=route.canonical,
            provider=route.provider,
            endpoint=self._endpoint.value,
            stream=stream,
            byok=byok,
        )
        if route.upstream_model != requested:
            body["model"] = route.upstream_model
            changed = True
        added = dict(ticket.rate_headers)
        added[BYOK_HEADER] = "true" if byok else "false"
        if ticket.clamped:
            added[CLAMP_HEADER] = str(ticket.output_tokens)
        if not changed:
            return forward_request(forward, added)
        return forward_request(forward, added, orjson.dumps(body), self._content_length)

    async def response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return CONTINUE_RESPONSE_HEADERS

    async def response_body(self, message: HttpBody) -> ProcessingResponse:
        meter = self._meter
        if meter is None:
            if self._ticket is None:
                return CONTINUE_RESPONSE_BODY
            meter = self._start_metering()
            if meter is None:
                return CONTINUE_RESPONSE_BODY
        chunk = message.body
        if isinstance(meter, ChatStreamRewriter):
            out = meter.feed(chunk)
            if message.end_of_stream:
                rest, usage = meter.finish()
                out += rest
                self._settle(usage, aborted=False)
            return CONTINUE_RESPONSE_BODY if out is chunk else replace_response_body(out)
        meter.feed(chunk)
        if message.end_of_stream:
            self._settle(meter.finish(), aborted=False)
        return CONTINUE_RESPONSE_BODY

    async def request_trailers(self, message: HttpTrailers) -> ProcessingResponse:
        return CONTINUE_REQUEST_TRAILERS

    async def response_trailers(self, message: HttpTrailers) -> ProcessingResponse:
        return CONTINUE_RESPONSE_TRAILERS

    def _start_metering(self) -> UsageParser | ChatStreamRewriter | None:
        """On the response's first body message: its status and content type (metadata from
        Envoy); an error answer is settled at once (nothing to meter), else the meter."""
        response = self.metadata.filter_metadata.get(RESPONSE_NAMESPACE)
        fields = {} if response is None else response.fields
        status = fields[STATUS_KEY].string_value if STATUS_KEY in fields else ""
        self._status = int(status) if status.isdigit() else 0
        if self._status >= 400:
            self._settle(Usage(), aborted=False)
            return None
        content_type = fields[CONTENT_TYPE_KEY].string_value if CONTENT_TYPE_KEY in fields else ""
        sse = content_type.startswith("text/event-stream")
        if sse and self._endpoint in _REWRITABLE_STREAMS:
            self._meter = ChatStreamRewriter(self._strip_usage)
        else:
            self._meter = parser_for(_METERING_API[self._endpoint], sse)
        return self._meter

    def _answer_is_whole(self, endpoint: Endpoint) -> bool:
        """Whether the answer to this request comes in one buffered message: of bounded size,
        and not streamed per the body's `stream` field as Envoy read it."""
        return endpoint in _WHOLE_ANSWERS and stream_not_asked(self.metadata)

    def on_stream_closed(self) -> None:
        """Called exactly once when the stream ends, however it ends (completed, reset by Envoy,
        cancelled): a request admitted but not settled was cut off, and is settled from a task
        of its own (the stream's task may be cancelled)."""
        if self._ticket is None:
            return
        meter = self._meter
        if isinstance(meter, ChatStreamRewriter):
            usage = meter.finish()[1]
        else:
            usage = meter.finish() if meter is not None else Usage()
        self._gateway.settler.settle_later(self._settlement(usage, aborted=True))

    def _ask_for_streamed_usage(self, body: dict[str, Any]) -> bool:
        """Ask an OpenAI-style stream for its usage chunk; when the client did not ask for it,
        remember to strip it (API.md §4: the client sees the stream it asked for)."""
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        body["stream_options"] = (
            {**options, "include_usage": True}
            if isinstance(options, dict)
            else {"include_usage": True}
        )
        self._strip_usage = True
        return True

    def _settle(self, usage: Usage, aborted: bool) -> None:
        """Settle from a task of its own: the reply that ends the response does not wait for the
        Redis round trip (the reservation covers the request until the settle lands)."""
        self._gateway.settler.settle_later(self._settlement(usage, aborted))

    def _settlement(self, usage: Usage, aborted: bool) -> Any:
        ticket = self._ticket
        assert ticket is not None
        self._ticket = None
        outcome = Outcome(self._status, usage, aborted, self._gateway.now_ms())
        return settle_request(ticket, self._facts, outcome)

    async def _upstream(self, provider: str) -> tuple[ProcessingResponse, bool]:
        """The reply that sends the request to `provider`, and whether it carries the parent's
        own key (BYOK): the parent's key when one is attached and the key may use it (a parent's
        own traffic always, a sub-account's when its policy says `byok`), else the platform's;
        neither → 400 `provider_not_configured`."""
        gateway = self._gateway
        policy = self._policy
        if gateway.byok is not None and (policy.sub_account_id is None or policy.byok):
            own = await gateway.byok.forward(policy.parent_id, provider)
            if own is not None:
                return own, True
        forward = gateway.upstreams[provider].forward
        if forward is None:
            raise provider_not_configured(provider)
        return forward, False

    async def _authenticate(self, authorization: bytes | None, api_key: bytes | None) -> KeyPolicy:
        key = _presented_key(authorization, api_key)
        policy = await self._gateway.policies.lookup(hash_key(key))
        if policy is None:
            raise invalid_api_key("Incorrect API key provided.")
        if not policy.usable_at(self._gateway.clock()):
            raise invalid_api_key("This API key has been revoked, has expired or was rotated out.")
        return policy

    def _ok(self, body: bytes) -> ProcessingResponse:
        return immediate_response(200, body, self.request_id, "aigw_answered")


def _presented_key(authorization: bytes | None, api_key: bytes | None) -> str:
    """The `sk-aig-` key of `Authorization: Bearer` or else of `x-api-key`; 401 when none."""
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and looks_like_key(token):
            return token
    if api_key is not None:
        token = api_key.decode("latin-1").strip()
        if looks_like_key(token):
            return token
    if authorization is None and api_key is None:
        raise invalid_api_key()
    raise invalid_api_key(
        "Malformed API key: gateway keys start with 'sk-aig-' and are sent as "
        "'Authorization: Bearer <key>' or 'x-api-key: <key>'."
    )


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body
