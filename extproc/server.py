"""The gRPC side: Envoy's `ExternalProcessor.Process` stream, one `Processor` per stream.

The loop only reads a message, hands the processor the metadata Envoy forwarded with it,
dispatches on its `oneof` to the processor's phase method of the same name and sends the
answer; a `GatewayError` from a phase becomes an immediate response here, the one place that
happens. `Processor.on_stream_closed` runs on every way out of the stream.

The last answer of a request (an immediate response, or the reply to the end of the response
body) ends the RPC, and goes out in one batch with the RPC's status: Envoy resets every ext_proc
stream as soon as its HTTP stream ends, and grpc.aio leaks the native memory of a batch sent on a
call the client has already reset (grpc/grpc#43360: ~100 bytes a request, 3 MiB a minute under
load here, when the stream was left to Envoy's reset). A status sent in a batch of its own right
after the last answer still often loses that race; sent with the answer, it leaves together with
it, before Envoy has read the answer. So `Process` is served as a stream-unary method (the wire
is the same bidirectional stream, `process_rpc`): the answers before the last are written as
they come, the last is its return value, which grpc.aio sends with the status. A stream
half-closed before the request's last message (Envoy resets instead; a test client may) ends
with CANCELLED after its answers.

The request phases also count the request's decision and time it (`extproc.metrics`), and the
stream's request id is put in scope for every log line (`aigw.logs.REQUEST_ID`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from time import perf_counter

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse

from aigw.errors import GatewayError
from aigw.logs import REQUEST_ID
from extproc import metrics
from extproc.gateway import Gateway
from extproc.health import Health
from extproc.messages import error_response
from extproc.processor import Processor

_MESSAGE_HEADROOM = 1024 * 1024
_REQUEST_PHASES = frozenset(("request_headers", "request_body"))


ProcessHandler = Callable[
    [AsyncIterable[ProcessingRequest], grpc.aio.ServicerContext], Awaitable[ProcessingResponse]
]


def process_rpc(process: ProcessHandler) -> grpc.GenericRpcHandler:
    """`envoy.service.ext_proc.v3.ExternalProcessor/Process` served by `process` as a
    stream-unary method: it writes the answers before the last (serialized) with
    `context.write` and returns the last (see the module's docstring)."""
    return grpc.method_handlers_generic_handler(
        "envoy.service.ext_proc.v3.ExternalProcessor",
        {
            "Process": grpc.stream_unary_rpc_method_handler(
                process,
                request_deserializer=ProcessingRequest.FromString,
                response_serializer=ProcessingResponse.SerializeToString,
            )
        },
    )


class ExternalProcessor:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Process(
        self, request_iterator: AsyncIterable[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> ProcessingResponse:
        """Answer each message; returns the request's last answer, which ends the RPC."""
        processor = Processor(self._gateway)
        deciding = 0.0
        try:
            async for request in request_iterator:
                phase = request.WhichOneof("request")
                processor.metadata = request.metadata_context
                if phase in _REQUEST_PHASES:
                    started = perf_counter()
                    answer, error = await _answer(processor, phase, request)
                    deciding += perf_counter() - started
                    if phase == "request_headers":
                        REQUEST_ID.set(processor.request_id or None)
                    immediate = answer.HasField("immediate_response")
                    decision = (
                        _decision_of_answer(phase, immediate)
                        if error is None
                        else metrics.decision_of(error)
                    )
                    if decision is not None:
                        metrics.decided(decision, deciding)
                    if immediate:
                        return answer
                else:
                    answer, _ = await _answer(processor, phase, request)
                    if answer.HasField("immediate_response") or _last_message(phase, request):
                        return answer
                await context.write(answer.SerializeToString())
        finally:
            processor.on_stream_closed()
        await context.abort(
            grpc.StatusCode.CANCELLED, "the stream ended before the request's last message"
        )


async def _answer(
    processor: Processor, phase: str, request: ProcessingRequest
) -> tuple[ProcessingResponse, GatewayError | None]:
    """The phase method's answer, or the client's error answer and the `GatewayError` behind it
    when the phase raised one."""
    try:
        return await getattr(processor, phase)(getattr(request, phase)), None
    except GatewayError as error:
        return error_response(error, processor.request_id), error


def _last_message(phase: str, request: ProcessingRequest) -> bool:
    """The end of the response body: Envoy sends nothing after it (trailers are skipped)."""
    return phase == "response_body" and request.response_body.end_of_stream


def _decision_of_answer(phase: str, immediate: bool) -> str | None:
    """A request phase that did not raise: answered by extproc itself with an immediate response
    (GET /v1/models), sent on to its provider (the body phase), or not decided yet (headers of a
    request with a body)."""
    if immediate:
        return metrics.ANSWERED
    return metrics.ADMITTED if phase == "request_body" else None


async def respond(processor: Processor, request: ProcessingRequest) -> ProcessingResponse:
    """The answer to one message, as the stream loop gives it (with the metadata Envoy
    forwarded): the phase method of the same name as the message's `oneof`, or the client's
    error answer when the phase raised `GatewayError`."""
    phase = request.WhichOneof("request")
    processor.metadata = request.metadata_context
    return (await _answer(processor, phase, request))[0]


def create_server(
    gateway: Gateway, address: str, max_request_bytes: int, health: Health | None = None
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for `gateway` bound to `address` (`host:port`, port 0 for a free one),
    sharing the port with other extproc processes (SO_REUSEPORT); returns it and the bound port.
    With `health`, the server also answers gRPC health checks (`extproc.health`).

    Messages carry whole buffered bodies, so gRPC's limits sit above `max_request_bytes`
    (ENVOY-NOTES #6).
    """
    message_limit = max_request_bytes + _MESSAGE_HEADROOM
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
        ]
    )
    server.add_generic_rpc_handlers((process_rpc(ExternalProcessor(gateway).Process),))
    if health is not None:
        server.add_generic_rpc_handlers((health.handler(),))
    port = server.add_insecure_port(address)
    return server, port
