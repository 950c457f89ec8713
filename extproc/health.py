"""The standard gRPC health service (`grpc.health.v1.Health/Check`) on extproc's own port, for
Kubernetes gRPC probes, Envoy's gRPC health checker and `grpc_health_probe`.

SERVING while the process runs, NOT_SERVING from the moment it begins to stop, so a load
balancer moves new streams elsewhere while open ones finish. The service name may be empty (the
whole server) or the ext_proc service's; any other is NOT_FOUND, as the protocol says.

The `grpcio-health-checking` package is not a dependency: the two messages are wire-identical to
protobuf wrappers — `HealthCheckRequest {string service = 1}` to `StringValue`, and
`HealthCheckResponse {ServingStatus status = 1}` (an enum, a varint) to `Int32Value` — so those
(de)serialise them.

`python -m extproc.health [HOST:PORT]` asks a running extproc (default `127.0.0.1:50051`) and
exits 0 when it is SERVING: a container health check for images without `grpc_health_probe`.
"""

from __future__ import annotations

import sys
from typing import Final

import grpc
from google.protobuf.wrappers_pb2 import Int32Value, StringValue

SERVICE: Final = "grpc.health.v1.Health"
EXT_PROC_SERVICE: Final = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVING: Final = 1
NOT_SERVING: Final = 2
_KNOWN_SERVICES: Final = ("", EXT_PROC_SERVICE)
_CHECK_METHOD: Final = f"/{SERVICE}/Check"
PROBE_TIMEOUT_S: Final = 2.0


class Health:
    """The serving status of this process, and the gRPC handler that reports it."""

    def __init__(self) -> None:
        self.serving = True

    async def check(self, request: StringValue, context: grpc.aio.ServicerContext) -> Int32Value:
        if request.value not in _KNOWN_SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.value!r}")
        return Int32Value(value=SERVING if self.serving else NOT_SERVING)

    def handler(self) -> grpc.GenericRpcHandler:
        check = grpc.unary_unary_rpc_method_handler(
            self.check,
            request_deserializer=StringValue.FromString,
            response_serializer=Int32Value.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Check": check})


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the extproc at `address` (`host:port`) answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            _CHECK_METHOD,
            request_serializer=StringValue.SerializeToString,
            response_deserializer=Int32Value.FromString,
        )
        try:
            return bool(check(StringValue(), timeout=timeout).value == SERVING)
        except grpc.RpcError:
            return False


if __name__ == "__main__":
    sys.exit(0 if probe(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051") else 1)
