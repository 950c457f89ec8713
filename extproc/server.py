"""The gRPC side: Envoy's `ExternalProcessor.Process` stream, one `Processor` per stream.

The loop only reads a message, dispatches on its `oneof` to the processor's phase method of the
same name and sends the answer; a `GatewayError` from a phase becomes an immediate response here,
the one place that happens. `Processor.on_stream_closed` runs on every way out of the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    ExternalProcessorServicer,
    add_ExternalProcessorServicer_to_server,
)

from aigw.errors import GatewayError
from extproc.gateway import Gateway
from extproc.messages import error_response
from extproc.processor import Processor

_MESSAGE_HEADROOM = 1024 * 1024


class ExternalProcessor(ExternalProcessorServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Process(
        self, request_iterator: AsyncIterable[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ProcessingResponse]:
        processor = Processor(self._gateway)
        try:
            async for request in request_iterator:
                yield await respond(processor, request)
        finally:
            processor.on_stream_closed()


async def respond(processor: Processor, request: ProcessingRequest) -> ProcessingResponse:
    """The answer to one message: the phase method of the same name as the message's `oneof`,
    or the client's error answer when the phase raised `GatewayError`."""
    phase = request.WhichOneof("request")
    try:
        return await getattr(processor, phase)(getattr(request, phase))
    except GatewayError as error:
        return error_response(error, processor.request_id)


def create_server(
    gateway: Gateway, address: str, max_request_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for `gateway` bound to `address` (`host:port`, port 0 for a free one),
    sharing the port with other extproc processes (SO_REUSEPORT); returns it and the bound port.

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
    add_ExternalProcessorServicer_to_server(ExternalProcessor(gateway), server)
    port = server.add_insecure_port(address)
    return server, port
