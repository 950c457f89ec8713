"""The Envoy clusters of the generated bootstrap: extproc (gRPC), the control plane and one per
provider (TLS with SNI and certificate validation for https). Private to `aigw.envoy_config`."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster, UpstreamConnectionOptions
from envoy.config.core.v3.address_pb2 import Address, SocketAddress, TcpKeepalive
from envoy.config.core.v3.base_pb2 import DataSource, TransportSocket
from envoy.config.core.v3.protocol_pb2 import (
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    KeepaliveSettings,
)
from envoy.config.core.v3.protocol_pb2 import (
    HttpProtocolOptions as CoreHttpProtocolOptions,
)
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import (
    CertificateValidationContext,
    SubjectAltNameMatcher,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    UpstreamTlsContext,
)
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from aigw.config import ConfigError, GatewayConfig, ProviderConfig, split_endpoint

_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Envoy's default circuit breakers allow 1024 requests in flight per cluster; an LLM stream holds
# one upstream request and one extproc stream for minutes, so a busy gateway needs far more.
_MAX_IN_FLIGHT = 100_000
# Upstream, this caps the streams Envoy multiplexes on one HTTP/2 connection to extproc: past it
# Envoy opens another connection, and the kernel spreads connections (not streams) over the
# extproc workers sharing the port (SO_REUSEPORT); uncapped, every stream lands on one worker.
# Not 1: a connection per stream cost ~20 % more extproc and Envoy CPU per request (bench/README).
STREAMS_PER_EXTPROC_CONNECTION = 16
_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSD
)


def pack(message: object) -> any_pb2.Any:
    """`message` as a `google.protobuf.Any`, the form of every `typed_config`."""
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(int(value * 1000))
    return duration


def socket_address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def provider_cluster_name(name: str) -> str:
    return f"provider_{name}"


def build_clusters(config: GatewayConfig) -> list[Cluster]:
    server = config.server
    extproc = [split_endpoint(e) for e in server.extproc_endpoints] or [
        ("127.0.0.1", server.extproc_port)
    ]
    controlplane = (
        split_endpoint(server.controlplane_endpoint)
        if server.controlplane_endpoint
        else ("127.0.0.1", server.controlplane_port)
    )
    clusters = [
        _static_cluster("extproc", extproc, connect_timeout=1.0, http2=True),
        _static_cluster("controlplane", [controlplane], connect_timeout=1.0, http2=False),
    ]
    clusters += [_provider_cluster(name, p) for name, p in sorted(config.providers.items())]
    return clusters


def _static_cluster(
    name: str, endpoints: list[tuple[str, int]], *, connect_timeout: float, http2: bool
) -> Cluster:
    """A cluster of our own processes: IP addresses as they are, host names (containers,
    Kubernetes services) resolved and re-resolved, every address a host (STRICT_DNS)."""
    if http2:
        protocol = HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions(
                connection_keepalive=KeepaliveSettings(interval=seconds(30), timeout=seconds(5)),
                max_concurrent_streams=wrappers_pb2.UInt32Value(
                    value=STREAMS_PER_EXTPROC_CONNECTION
                ),
            )
        )
    else:
        protocol = HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        )
    by_ip = all(_is_ip(host) for host, _ in endpoints)
    cluster = Cluster(
        name=name,
        type=Cluster.STATIC if by_ip else Cluster.STRICT_DNS,
        connect_timeout=seconds(connect_timeout),
        load_assignment=_endpoints(name, endpoints),
        circuit_breakers=_circuit_breakers(),
        typed_extension_protocol_options={
            _HTTP_OPTIONS_KEY: pack(HttpProtocolOptions(explicit_http_config=protocol))
        },
    )
    if not by_ip:
        cluster.dns_lookup_family = Cluster.V4_PREFERRED
    return cluster


def _provider_cluster(name: str, provider: ProviderConfig) -> Cluster:
    host = provider.hostname
    is_ip = _is_ip(host)
    common = CoreHttpProtocolOptions(idle_timeout=seconds(50))
    if provider.scheme == "https":
        # HTTP/2 when the provider offers it in ALPN, else HTTP/1.1.
        protocol = HttpProtocolOptions(
            common_http_protocol_options=common,
            auto_config=HttpProtocolOptions.AutoHttpConfig(
                http_protocol_options=Http1ProtocolOptions(),
                http2_protocol_options=Http2ProtocolOptions(),
            ),
        )
    else:
        protocol = HttpProtocolOptions(
            common_http_protocol_options=common,
            explicit_http_config=HttpProtocolOptions.ExplicitHttpConfig(
                http_protocol_options=Http1ProtocolOptions()
            ),
        )
    cluster = Cluster(
        name=provider_cluster_name(name),
        type=Cluster.STATIC if is_ip else Cluster.LOGICAL_DNS,
        connect_timeout=seconds(10),
        load_assignment=_endpoints(provider_cluster_name(name), [(host, provider.port)]),
        circuit_breakers=_circuit_breakers(),
        upstream_connection_options=UpstreamConnectionOptions(
            tcp_keepalive=TcpKeepalive(
                keepalive_time=wrappers_pb2.UInt32Value(value=30),
                keepalive_interval=wrappers_pb2.UInt32Value(value=10),
                keepalive_probes=wrappers_pb2.UInt32Value(value=3),
            )
        ),
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: pack(protocol)},
    )
    if not is_ip:
        cluster.dns_lookup_family = Cluster.V4_PREFERRED
    if provider.scheme == "https":
        cluster.transport_socket.CopyFrom(_tls(name, provider, is_ip))
    return cluster


def _tls(name: str, provider: ProviderConfig, is_ip: bool) -> TransportSocket:
    host = provider.hostname
    san = SubjectAltNameMatcher(
        san_type=SubjectAltNameMatcher.IP_ADDRESS if is_ip else SubjectAltNameMatcher.DNS,
        matcher=StringMatcher(exact=host),
    )
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=ca_bundle(name, provider)),
                match_typed_subject_alt_names=[san],
            ),
        ),
    )
    if not is_ip:
        context.sni = host
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def ca_bundle(name: str, provider: ProviderConfig) -> str:
    """The CA certificates to verify `provider` with: its `ca_file`, else the system's bundle."""
    if provider.ca_file:
        path = Path(provider.ca_file).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"providers.{name}.ca_file: no such file: {path}")
        return str(path)
    candidates = [ssl.get_default_verify_paths().cafile, *_CA_BUNDLES]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise ConfigError(
        f"providers.{name}.ca_file: no system CA bundle found to verify {provider.hostname}; "
        "set ca_file to a PEM file of trusted CA certificates"
    )


def _endpoints(cluster: str, endpoints: list[tuple[str, int]]) -> ClusterLoadAssignment:
    hosts = [
        LbEndpoint(endpoint=Endpoint(address=socket_address(host, port)))
        for host, port in endpoints
    ]
    return ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[LocalityLbEndpoints(lb_endpoints=hosts)]
    )


def _circuit_breakers() -> CircuitBreakers:
    limit = wrappers_pb2.UInt32Value(value=_MAX_IN_FLIGHT)
    return CircuitBreakers(
        thresholds=[
            CircuitBreakers.Thresholds(
                max_connections=limit, max_pending_requests=limit, max_requests=limit
            )
        ]
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
