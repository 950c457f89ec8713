"""The Envoy side of `aigw.processing_metadata`: the two filters around ext_proc that copy what
extproc needs into dynamic metadata, which namespaces ext_proc forwards and accepts, and the
response headers Envoy adds from what extproc emitted.

With them a non-streamed request costs three ext_proc messages (request headers, request body,
the whole response body) instead of four: the response-body mode is chosen in the
request-headers reply, from the `stream` field Envoy read, and the response headers are never
sent to extproc (bench/README.md).
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2 import (
    HeaderForwardingRules,
    MetadataOptions,
)
from envoy.extensions.filters.http.header_to_metadata.v3.header_to_metadata_pb2 import (
    Config as HeaderToMetadata,
)
from envoy.extensions.filters.http.json_to_metadata.v3.json_to_metadata_pb2 import JsonToMetadata
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpFilter,
)
from envoy.type.matcher.v3.string_pb2 import ListStringMatcher, StringMatcher
from google.protobuf import struct_pb2

from aigw import processing_metadata as names
from aigw._envoy_clusters import pack


def request_metadata_filter() -> HttpFilter:
    """Ahead of ext_proc: the request body's `stream` field (a JSON body, with or without a
    content-type) into `aigw.request`, false when the body has none; nothing for a body that is
    not JSON."""
    stream = JsonToMetadata.Rule(
        selectors=[JsonToMetadata.Selector(key=names.STREAM_KEY)],
        on_present=JsonToMetadata.KeyValuePair(
            metadata_namespace=names.REQUEST_NAMESPACE,
            key=names.STREAM_KEY,
            type=JsonToMetadata.PROTOBUF_VALUE,
        ),
        on_missing=JsonToMetadata.KeyValuePair(
            metadata_namespace=names.REQUEST_NAMESPACE,
            key=names.STREAM_KEY,
            value=struct_pb2.Value(bool_value=False),
            type=JsonToMetadata.PROTOBUF_VALUE,
        ),
    )
    config = JsonToMetadata(
        request_rules=JsonToMetadata.MatchRules(rules=[stream], allow_empty_content_type=True)
    )
    return HttpFilter(name="envoy.filters.http.json_to_metadata", typed_config=pack(config))


def response_metadata_filter() -> HttpFilter:
    """After ext_proc (so it sees the response first): the response's status and content type
    into `aigw.response`."""
    rules = [
        HeaderToMetadata.Rule(
            header=header,
            on_header_present=HeaderToMetadata.KeyValuePair(
                metadata_namespace=names.RESPONSE_NAMESPACE, key=key, type=HeaderToMetadata.STRING
            ),
        )
        for header, key in ((":status", names.STATUS_KEY), ("content-type", names.CONTENT_TYPE_KEY))
    ]
    config = HeaderToMetadata(response_rules=rules)
    return HttpFilter(name="envoy.filters.http.header_to_metadata", typed_config=pack(config))


def ext_proc_metadata_options() -> MetadataOptions:
    return MetadataOptions(
        forwarding_namespaces=MetadataOptions.MetadataNamespaces(
            untyped=[names.REQUEST_NAMESPACE, names.RESPONSE_NAMESPACE]
        ),
        receiving_namespaces=MetadataOptions.MetadataNamespaces(untyped=[names.HEADERS_NAMESPACE]),
    )


def ext_proc_forward_rules() -> HeaderForwardingRules:
    """Only the request headers extproc reads are sent to it."""
    patterns = [StringMatcher(exact=name) for name in names.FORWARDED_REQUEST_HEADERS]
    patterns.append(StringMatcher(prefix=names.GATEWAY_HEADER_PREFIX))
    return HeaderForwardingRules(allowed_headers=ListStringMatcher(patterns=patterns))


def response_headers_from_metadata() -> list[HeaderValueOption]:
    """One header per name of `RESPONSE_HEADERS`, added only when extproc emitted it."""
    return [
        HeaderValueOption(
            header=HeaderValue(
                key=name, value=f"%DYNAMIC_METADATA({names.HEADERS_NAMESPACE}:{name})%"
            ),
            append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            keep_empty_value=False,
        )
        for name in names.RESPONSE_HEADERS
    ]
