"""The Envoy bootstrap that `aigw up` runs, generated from the gateway configuration.

    build_envoy_config(config) -> dict     the bootstrap as Envoy's JSON/YAML form
    render_envoy_yaml(config) -> str       the same as YAML text (`aigw envoy-config`)

Built from the typed `xds-protos` messages, so a misspelt field fails here rather than in
Envoy, then converted through `MessageToJson`. What is generated and why: `envoy/README.md`; the
seams it implements: docs/internals.md, "Envoy ↔ extproc".
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import orjson
import yaml
from envoy.config.bootstrap.v3.bootstrap_pb2 import Admin, Bootstrap
from envoy.config.common.mutation_rules.v3.mutation_rules_pb2 import HeaderMutationRules
from envoy.config.core.v3.address_pb2 import CidrRange
from envoy.config.core.v3.base_pb2 import DataSource, HeaderValue, HeaderValueOption, Node
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.core.v3.protocol_pb2 import HttpProtocolOptions
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.overload.v3.overload_pb2 import OverloadManager, ResourceMonitor
from envoy.config.route.v3.route_components_pb2 import (
    DirectResponseAction,
    HeaderMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2 import (
    ExternalProcessor,
    ExtProcPerRoute,
)
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
)
from envoy.extensions.resource_monitors.downstream_connections.v3.downstream_connections_pb2 import (  # noqa: E501
    DownstreamConnectionsConfig,
)
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf import json_format, wrappers_pb2

from aigw._envoy_clusters import (
    build_clusters,
    pack,
    provider_cluster_name,
    seconds,
    socket_address,
)
from aigw._envoy_local_reply import (
    build_local_reply_config,
    envelope,
    request_id_header,
)
from aigw._envoy_metadata import (
    ext_proc_forward_rules,
    ext_proc_metadata_options,
    request_metadata_filter,
    response_headers_from_metadata,
    response_metadata_filter,
)
from aigw.config import ConfigError, GatewayConfig, ProviderConfig

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
PROVIDER_HEADER = "x-aig-provider"
# Control-plane paths: matched as whole path segments (`/v1/me` must not catch `/v1/messages`).
CONTROL_PLANE_PREFIXES = (
    "/v1/sub-accounts",
    "/v1/me",
    "/v1/tiers",
    "/v1/usage",
    "/v1/requests",
    "/v1/billing",
    "/v1/webhooks",
    "/v1/provider-keys",
    "/docs",
    "/dashboard",
    "/static",
)
CONTROL_PLANE_PATHS = ("/healthz", "/v1/openapi.json")
ROUTE_TIMEOUT_S = 600  # a long reasoning stream may take minutes
STREAM_IDLE_TIMEOUT_S = 300
EXT_PROC_MESSAGE_TIMEOUT_S = 5
MAX_DOWNSTREAM_CONNECTIONS = 50_000
# Headers the processor rewrites: routing, auth, the rewritten body's length.
_PROCESSOR_HEADERS = r"(authorization|x-api-key|anthropic-version|content-length|x-aig-.*)"
# The customer's address is none of the provider's business.
_CLIENT_ADDRESS_HEADERS = ("x-forwarded-for", "x-envoy-external-address")
# Provider response headers that describe the platform's own provider account.
_PROVIDER_RESPONSE_HEADERS_REMOVED = (
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "set-cookie",
)


def build_envoy_config(config: GatewayConfig) -> dict[str, Any]:
    """The bootstrap for `config`, as the dict Envoy reads from YAML or JSON."""
    bootstrap = Bootstrap(
        node=Node(id="aigw", cluster="aigw"),
        admin=Admin(address=socket_address("127.0.0.1", config.server.envoy_admin_port)),
        overload_manager=OverloadManager(
            resource_monitors=[
                ResourceMonitor(
                    name="envoy.resource_monitors.global_downstream_max_connections",
                    typed_config=pack(
                        DownstreamConnectionsConfig(
                            max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS
                        )
                    ),
                )
            ]
        ),
    )
    bootstrap.static_resources.listeners.append(_listener(config))
    bootstrap.static_resources.clusters.extend(build_clusters(config))
    # Through JSON text: MessageToDict returns OrderedDicts for packed messages.
    result = orjson.loads(json_format.MessageToJson(bootstrap, preserving_proto_field_name=True))
    # A default that JSON leaves out, spelled out for whoever reads `aigw envoy-config`.
    manager = result["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    ext_proc = manager["typed_config"]["http_filters"][1]["typed_config"]
    ext_proc["failure_mode_allow"] = False
    return dict(result)


def render_envoy_yaml(config: GatewayConfig) -> str:
    header = "# Generated by `aigw envoy-config` from the gateway configuration; do not edit.\n"
    return header + yaml.safe_dump(build_envoy_config(config), sort_keys=False)


def _listener(config: GatewayConfig) -> Listener:
    manager = HttpConnectionManager(
        stat_prefix="aigw",
        codec_type=HttpConnectionManager.AUTO,
        # Envoy is the edge. No peer counts as internal (by default loopback and private
        # ranges do): so x-request-id is always regenerated, never taken from the client,
        # and no client's x-envoy-* headers are trusted.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        internal_address_config=HttpConnectionManager.InternalAddressConfig(
            cidr_ranges=[
                CidrRange(
                    address_prefix="255.255.255.255", prefix_len=wrappers_pb2.UInt32Value(value=32)
                )
            ]
        ),
        server_name="aigw",
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=HttpConnectionManager.UNESCAPE_AND_REDIRECT,
        stream_idle_timeout=seconds(STREAM_IDLE_TIMEOUT_S),
        request_headers_timeout=seconds(30),
        common_http_protocol_options=HttpProtocolOptions(idle_timeout=seconds(300)),
        route_config=_route_config(config),
        local_reply_config=build_local_reply_config(config.max_request_bytes),
        http_filters=[
            request_metadata_filter(),
            HttpFilter(name=EXT_PROC_FILTER, typed_config=pack(_ext_proc())),
            response_metadata_filter(),
            HttpFilter(
                name="envoy.filters.http.router",
                typed_config=pack(Router(suppress_envoy_headers=True)),
            ),
        ],
    )
    return Listener(
        name="aigw",
        address=socket_address(_listen_ip(config.server.host), config.server.port),
        # Also the cap on a buffered request body: above it Envoy answers 413.
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=config.max_request_bytes),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(manager),
                    )
                ]
            )
        ],
    )


def _ext_proc() -> ExternalProcessor:
    return ExternalProcessor(
        grpc_service=GrpcService(envoy_grpc=GrpcService.EnvoyGrpc(cluster_name="extproc")),
        failure_mode_allow=False,  # fail closed: a dead processor must never skip auth
        allow_mode_override=True,
        message_timeout=seconds(EXT_PROC_MESSAGE_TIMEOUT_S),
        # The request-headers reply chooses the response-body mode (extproc.messages); streamed
        # is for a request that got none (no body, not JSON).
        processing_mode=ProcessingMode(
            request_header_mode=ProcessingMode.SEND,
            request_body_mode=ProcessingMode.BUFFERED,
            response_header_mode=ProcessingMode.SKIP,
            response_body_mode=ProcessingMode.STREAMED,
            request_trailer_mode=ProcessingMode.SKIP,
            response_trailer_mode=ProcessingMode.SKIP,
        ),
        metadata_options=ext_proc_metadata_options(),
        forward_rules=ext_proc_forward_rules(),
        mutation_rules=HeaderMutationRules(
            allow_expression=RegexMatcher(regex=_PROCESSOR_HEADERS),
            disallow_is_error=wrappers_pb2.BoolValue(value=True),
        ),
    )


def _route_config(config: GatewayConfig) -> RouteConfiguration:
    routes = [_control_plane_route(RouteMatch(path=path)) for path in CONTROL_PLANE_PATHS]
    routes += [
        _control_plane_route(RouteMatch(path_separated_prefix=prefix))
        for prefix in CONTROL_PLANE_PREFIXES
    ]
    routes += [_provider_route(name, p) for name, p in sorted(config.providers.items())]
    routes.append(_unknown_url_route())
    host = VirtualHost(
        name="aigw",
        domains=["*"],
        routes=routes,
        response_headers_to_add=[request_id_header(), *response_headers_from_metadata()],
    )
    return RouteConfiguration(name="aigw", virtual_hosts=[host])


def _control_plane_route(match: RouteMatch) -> Route:
    return Route(
        match=match,
        route=RouteAction(cluster="controlplane", timeout=seconds(120)),
        typed_per_filter_config={EXT_PROC_FILTER: pack(ExtProcPerRoute(disabled=True))},
    )


def _provider_route(name: str, provider: ProviderConfig) -> Route:
    host = provider.hostname
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if provider.scheme == "https" else 80
    if provider.port != default_port:
        host = f"{host}:{provider.port}"
    return Route(
        name=provider_cluster_name(name),
        match=RouteMatch(
            prefix="/v1/",
            headers=[HeaderMatcher(name=PROVIDER_HEADER, string_match=StringMatcher(exact=name))],
        ),
        route=RouteAction(
            cluster=provider_cluster_name(name),
            prefix_rewrite=f"{provider.base_path}/",
            host_rewrite_literal=host,
            timeout=seconds(ROUTE_TIMEOUT_S),
            # Only retries that cannot send a request twice: the connection failed, or the
            # provider closed an idle pooled connection before the request went out.
            retry_policy=RetryPolicy(
                retry_on="connect-failure,refused-stream,reset-before-request",
                num_retries=wrappers_pb2.UInt32Value(value=1),
            ),
        ),
        request_headers_to_remove=[PROVIDER_HEADER, *_CLIENT_ADDRESS_HEADERS],
        response_headers_to_remove=list(_PROVIDER_RESPONSE_HEADERS_REMOVED),
    )


def _unknown_url_route() -> Route:
    """Data-plane paths the processor did not route; it normally answers them itself."""
    body = envelope(
        "unknown_url",
        "invalid_request_error",
        "Unknown URL. This gateway serves the OpenAI-compatible API under /v1.",
    )
    return Route(
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(
            status=404, body=DataSource(inline_string=body.decode())
        ),
        response_headers_to_add=[
            HeaderValueOption(
                header=HeaderValue(key="content-type", value="application/json"),
                append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )


def _listen_ip(host: str) -> str:
    """Envoy listens on IP addresses only: resolve a name such as `localhost` once."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"server.host: cannot resolve {host!r}: {exc}") from None
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)  # IPv4 first, as clients try
    return str(found[0][4][0])
