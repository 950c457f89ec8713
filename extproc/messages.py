"""The ext_proc replies extproc sends, built from `xds-protos` messages.

Envoy reads header values from `raw_value` only (ENVOY-NOTES #1) and appends by default, so every
header set here carries `raw_value` and an explicit append action. The pass-through replies are
built once and shared: a reply message is only read (serialised) after it is handed to gRPC.
Each phase has its own reply type (ENVOY-NOTES #2); an `ImmediateResponse` ends any phase.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    ImmediateResponse,
    ProcessingResponse,
    TrailersResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus

from aigw.errors import GatewayError

OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
ADD_IF_ABSENT = HeaderValueOption.ADD_IF_ABSENT
REQUEST_ID_HEADER = "x-aig-request-id"
_JSON = b"application/json"

CONTINUE_REQUEST_HEADERS = ProcessingResponse(request_headers=HeadersResponse())
CONTINUE_RESPONSE_HEADERS = ProcessingResponse(response_headers=HeadersResponse())
CONTINUE_RESPONSE_BODY = ProcessingResponse(response_body=BodyResponse())
CONTINUE_REQUEST_TRAILERS = ProcessingResponse(request_trailers=TrailersResponse())
CONTINUE_RESPONSE_TRAILERS = ProcessingResponse(response_trailers=TrailersResponse())


def header(key: str, value: str | bytes, action: int = OVERWRITE) -> HeaderValueOption:
    """One header to set; `value` is sent as `raw_value`."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return HeaderValueOption(header=HeaderValue(key=key, raw_value=raw), append_action=action)


def remove_request_headers(names: Iterable[str]) -> ProcessingResponse:
    """The request-headers reply that drops the named headers and lets the request go on."""
    mutation = HeaderMutation(remove_headers=names)
    return ProcessingResponse(
        request_headers=HeadersResponse(response=CommonResponse(header_mutation=mutation))
    )


def immediate_response(
    status: int, body: bytes, request_id: str, details: str, extra: dict[str, str] | None = None
) -> ProcessingResponse:
    """Answer the client at once with a JSON body; nothing goes upstream (ENVOY-NOTES #16)."""
    headers = [header("content-type", _JSON), header(REQUEST_ID_HEADER, request_id)]
    if extra:
        headers.extend(header(key.lower(), value) for key, value in extra.items())
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=status),
            headers=HeaderMutation(set_headers=headers),
            body=body,
            details=details,
        )
    )


def error_response(error: GatewayError, request_id: str) -> ProcessingResponse:
    """The one place a `GatewayError` becomes what the client sees: the OpenAI error envelope."""
    return immediate_response(
        error.status, error.body_bytes(), request_id, f"aigw_{error.code}", error.headers
    )
