"""`python -m bench.floor_processor --port N`: the ext_proc floor's processor. It answers every
message the way the gateway's extproc does when it lets a request through unchanged — the
request-headers reply with the same response-body mode override (whole for a non-streamed
request, streamed otherwise), the others plain pass-through replies built once — on the same
server stack (grpc.aio on uvloop, `Process` served stream-unary so the last answer leaves with
the RPC's status, as `extproc.server` does), and does nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterable

import grpc
import uvloop
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    ProcessingRequest,
    ProcessingResponse,
)

from aigw.processing_metadata import stream_not_asked
from extproc.messages import (
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_TRAILERS,
    continue_request_headers,
)
from extproc.server import process_rpc

_WHOLE = continue_request_headers([], True)
_STREAMED = continue_request_headers([], False)
_REPLIES = {
    "request_body": ProcessingResponse(request_body=BodyResponse()),
    "response_headers": CONTINUE_RESPONSE_HEADERS,
    "response_body": CONTINUE_RESPONSE_BODY,
    "request_trailers": CONTINUE_REQUEST_TRAILERS,
    "response_trailers": CONTINUE_RESPONSE_TRAILERS,
}


async def process(
    request_iterator: AsyncIterable[ProcessingRequest], context: grpc.aio.ServicerContext
) -> ProcessingResponse:
    async for request in request_iterator:
        phase = request.WhichOneof("request")
        if phase == "request_headers":
            answer = _WHOLE if stream_not_asked(request.metadata_context) else _STREAMED
        else:
            answer = _REPLIES[phase]
            if phase == "response_body" and request.response_body.end_of_stream:
                return answer  # with the status, as extproc.server does
        await context.write(answer.SerializeToString())
    await context.abort(grpc.StatusCode.CANCELLED, "the stream ended before the response body")


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((process_rpc(process),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_processor")
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
