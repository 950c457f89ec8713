"""The ext_proc replies extproc sends, built from `xds-protos` messages.

Envoy reads header values from `raw_value` only (ENVOY-NOTES #1) and appends by default, so every
header set here carries `raw_value` and an explicit append action. The pass-through replies are
built once and shared: a reply message is only read (serialised) after it is handed to gRPC.
Each phase has its own reply type (ENVOY-NOTES #2); an `ImmediateResponse` ends any phase.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyMutation,
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

CONTINUE_RESPONSE_HEADERS = ProcessingResponse(response_headers=HeadersResponse())
CONTINUE_RESPONSE_BODY = ProcessingResponse(response_body=BodyResponse())
CONTINUE_REQUEST_TRAILERS = ProcessingResponse(request_trailers=TrailersResponse())
CONTINUE_RESPONSE_TRAILERS = ProcessingResponse(response_trailers=TrailersResponse())


def _mode(response_body: int) -> ProcessingMode:
    """The whole processing mode with one response-body mode: an override replaces every field,
    so the others repeat the filter's configuration (ENVOY-NOTES #13). Response headers are never
    sent: what extproc needs of them comes as metadata (`aigw.processing_metadata`)."""
    return ProcessingMode(
        request_header_mode=ProcessingMode.SEND,
        request_body_mode=ProcessingMode.BUFFERED,
        response_header_mode=ProcessingMode.SKIP,
        response_body_mode=response_body,
        request_trailer_mode=ProcessingMode.SKIP,
        response_trailer_mode=ProcessingMode.SKIP,
    )


STREAMED_BODY = _mode(ProcessingMode.STREAMED)
"""The response body in one message per upstream read, and an empty last one."""
BUFFERED_BODY = _mode(ProcessingMode.BUFFERED)
"""The whole response body in one message (a non-streamed answer)."""


def header(key: str, value: str | bytes, action: int = OVERWRITE) -> HeaderValueOption:
    """One header to set; `value` is sent as `raw_value`."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return HeaderValueOption(header=HeaderValue(key=key, raw_value=raw), append_action=action)


def continue_request_headers(remove: list[str], buffered: bool) -> ProcessingResponse:
    """The request-headers reply that drops the named headers, lets the request go on, and
    says how the response body will reach the processor: whole (`buffered`) or streamed."""
    if not remove:
        return _CONTINUE_BUFFERED if buffered else _CONTINUE_STREAMED
    mutation = HeaderMutation(remove_headers=remove)
    return ProcessingResponse(
        request_headers=HeadersResponse(response=CommonResponse(header_mutation=mutation)),
        mode_override=BUFFERED_BODY if buffered else STREAMED_BODY,
    )


_CONTINUE_BUFFERED = ProcessingResponse(
    request_headers=HeadersResponse(), mode_override=BUFFERED_BODY
)
_CONTINUE_STREAMED = ProcessingResponse(
    request_headers=HeadersResponse(), mode_override=STREAMED_BODY
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


def replace_response_body(body: bytes) -> ProcessingResponse:
    """Send `body` to the client instead of the chunk received (nothing when empty)."""
    mutation = BodyMutation(body=body) if body else BodyMutation(clear_body=True)
    return ProcessingResponse(
        response_body=BodyResponse(response=CommonResponse(body_mutation=mutation))
    )
