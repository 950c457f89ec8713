"""Envoy's own error replies in the OpenAI envelope, and `x-aig-request-id` on every local reply.
Private to `aigw.envoy_config`.

extproc's ImmediateResponses (401/402/403/404/429/503…) are Envoy local replies too, and their
bodies must reach the client exactly. They carry no response flag and empty response-code
details, so every rewriting mapper below matches on something only Envoy's own replies have
(a CEL test of the response-code details, or an upstream response flag), never on the status
alone. The last mapper matches every other local reply and only adds the request-id header.
"""

from __future__ import annotations

import orjson
from envoy.config.accesslog.v3.accesslog_pb2 import (
    AccessLogFilter,
    AndFilter,
    ComparisonFilter,
    ExtensionFilter,
    ResponseFlagFilter,
    StatusCodeFilter,
)
from envoy.config.core.v3.base_pb2 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    RuntimeUInt32,
)
from envoy.config.core.v3.substitution_format_string_pb2 import SubstitutionFormatString
from envoy.extensions.access_loggers.filters.cel.v3.cel_pb2 import ExpressionFilter
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    LocalReplyConfig,
    ResponseMapper,
)
from google.protobuf import any_pb2, wrappers_pb2

REQUEST_ID_HEADER = "x-aig-request-id"
REQUEST_ID_VALUE = "%REQ(x-request-id)%"
CONTROL_PLANE_CLUSTER = "controlplane"
# Response flags of a request that got no answer from its upstream.
_TIMEOUT_FLAGS = ("UT",)
_UNREACHABLE_FLAGS = ("UF", "URX", "UC", "UR", "DF")
_UNAVAILABLE_FLAGS = ("UH", "UO", "NC")


def request_id_header() -> HeaderValueOption:
    """`x-aig-request-id: <Envoy's x-request-id>`, replacing any value already there."""
    return HeaderValueOption(
        header=HeaderValue(key=REQUEST_ID_HEADER, value=REQUEST_ID_VALUE),
        append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def envelope(code: str, error_type: str, message: str) -> bytes:
    """The contract's error body (API.md §4)."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "code": code, "param": None}}
    )


def build_local_reply_config(max_request_bytes: int) -> LocalReplyConfig:
    any_failure = _flags(*_TIMEOUT_FLAGS, *_UNREACHABLE_FLAGS, *_UNAVAILABLE_FLAGS)
    mappers = [
        _mapper(  # the listener's buffer limit: Envoy's plain-text "Payload Too Large"
            _cel("response.code_details == 'request_payload_too_large'"),
            413,
            "request_too_large",
            "invalid_request_error",
            f"The request body is larger than the gateway's limit of {max_request_bytes} bytes.",
        ),
        _mapper(  # extproc down, failing or too slow: fail closed, as when Redis is down
            _cel("response.code_details.startsWith('ext_proc_error')"),
            503,
            "gateway_unavailable",
            "api_error",
            "The gateway cannot check limits right now; the request was not sent. Retry shortly.",
        ),
        _mapper(
            AccessLogFilter(
                and_filter=AndFilter(
                    filters=[any_failure, _cel(f"xds.cluster_name == '{CONTROL_PLANE_CLUSTER}'")]
                )
            ),
            503,
            "controlplane_unavailable",
            "api_error",
            "The gateway's control plane is not reachable right now; retry shortly.",
        ),
        _mapper(  # an https provider whose certificate does not verify (CA, host name)
            _cel("response.code_details.contains('CERTIFICATE_VERIFY_FAILED')"),
            502,
            "provider_tls_error",
            "api_error",
            "The provider's TLS certificate could not be verified (not signed by a trusted CA, "
            "or issued for another host name); the request was not sent. The operator can set "
            "the provider's ca_file.",
        ),
        _mapper(  # any other TLS failure with an https provider (handshake, protocol)
            _cel("response.code_details.contains('TLS_error')"),
            502,
            "provider_tls_error",
            "api_error",
            "The TLS handshake with the provider failed; the request was not sent.",
        ),
        _mapper(
            _flags(*_TIMEOUT_FLAGS),
            504,
            "provider_timeout",
            "api_error",
            "The provider did not answer in time.",
        ),
        _mapper(
            _flags(*_UNREACHABLE_FLAGS),
            502,
            "provider_unreachable",
            "api_error",
            "The provider could not be reached; the request was not completed.",
        ),
        _mapper(
            _flags(*_UNAVAILABLE_FLAGS),
            503,
            "provider_unavailable",
            "api_error",
            "No connection to the provider is available right now; retry shortly.",
        ),
        # Everything else (extproc's ImmediateResponses, direct responses): the header only.
        ResponseMapper(filter=_any_status(), headers_to_add=[request_id_header()]),
    ]
    return LocalReplyConfig(mappers=mappers)


def _mapper(
    match: AccessLogFilter, status: int, code: str, error_type: str, message: str
) -> ResponseMapper:
    body = envelope(code, error_type, message).decode().replace("%", "%%")
    return ResponseMapper(
        filter=match,
        status_code=wrappers_pb2.UInt32Value(value=status),
        body_format_override=SubstitutionFormatString(
            text_format_source=DataSource(inline_string=body),
            content_type="application/json",
        ),
        headers_to_add=[request_id_header()],
    )


def _cel(expression: str) -> AccessLogFilter:
    config = any_pb2.Any()
    config.Pack(ExpressionFilter(expression=expression))
    return AccessLogFilter(
        extension_filter=ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel", typed_config=config
        )
    )


def _flags(*flags: str) -> AccessLogFilter:
    return AccessLogFilter(response_flag_filter=ResponseFlagFilter(flags=list(flags)))


def _any_status() -> AccessLogFilter:
    comparison = ComparisonFilter(
        op=ComparisonFilter.GE,
        value=RuntimeUInt32(default_value=0, runtime_key="aigw.local_reply.min_status"),
    )
    return AccessLogFilter(status_code_filter=StatusCodeFilter(comparison=comparison))
