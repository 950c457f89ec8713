"""A real gRPC round trip: the extproc server on a free port, called by a grpc.aio client the way
Envoy's ext_proc filter calls it (one bidirectional stream per HTTP request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    ProcessingRequest,
    ProcessingResponse,
)
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub

from aigw.keys import generate_key
from extproc import server
from extproc.processor import Processor
from extproc.server import create_server
from tests.unit.test_extproc_processor import (
    POLICY,
    REQUEST_ID,
    bearer,
    request_body,
    request_headers,
    running_gateway,
    store_policy,
)


@pytest.fixture
async def stub(redis_url: str) -> AsyncIterator[ExternalProcessorStub]:
    async with running_gateway(redis_url) as gateway:
        grpc_server, port = create_server(gateway, "127.0.0.1:0", max_request_bytes=1024 * 1024)
        await grpc_server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        yield ExternalProcessorStub(channel)
        await asyncio.wait_for(channel.close(grace=0), 5)
        await asyncio.wait_for(grpc_server.stop(0), 5)


async def answers_and_status(
    stub: ExternalProcessorStub, messages: list[ProcessingRequest]
) -> tuple[list[ProcessingResponse], grpc.StatusCode]:
    """The answers to `messages` over one stream that the client then half-closes, and the
    status the server ended it with: OK after a request's last answer, CANCELLED when the client
    half-closed before it (Envoy never does; it resets the stream)."""
    call = stub.Process(iter(messages))
    responses: list[ProcessingResponse] = []
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            responses.append(response)
    except grpc.aio.AioRpcError as error:
        return responses, error.code()
    return responses, await call.code()


async def test_request_without_a_key_is_answered_401_and_the_server_ends_the_rpc(
    stub: ExternalProcessorStub,
) -> None:
    """After an immediate response the server closes the stream with OK itself: Envoy sends
    nothing more, and waiting for its reset would leak (grpc/grpc#43360)."""
    call = stub.Process()
    await call.write(request_headers("POST", "/v1/chat/completions", {}))
    response = await call.read()

    assert response.immediate_response.status.code == 401
    assert orjson.loads(response.immediate_response.body)["error"]["code"] == "invalid_api_key"
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_a_request_is_rewritten_over_one_stream(
    stub: ExternalProcessorStub, redis_url: str
) -> None:
    key = generate_key()
    await store_policy(redis_url, key, POLICY)
    messages: list[ProcessingRequest] = [
        request_headers("POST", "/v1/chat/completions", bearer(key)),
        request_body({"model": "openai/gpt-5.4-mini", "messages": []}),
    ]

    responses, status = await answers_and_status(stub, messages)

    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body"]
    assert status is grpc.StatusCode.CANCELLED  # half-closed before the response
    rewritten = responses[1].request_body.response.body_mutation.body
    assert orjson.loads(rewritten)["model"] == "gpt-5.4-mini"


class RecordingProcessor(Processor):
    __slots__ = ()
    closed: ClassVar[list[str]] = []

    def on_stream_closed(self) -> None:
        self.closed.append(self.request_id)


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    RecordingProcessor.closed = []
    monkeypatch.setattr(server, "Processor", RecordingProcessor)
    return RecordingProcessor.closed


async def test_stream_closed_hook_runs_when_envoy_ends_the_stream(
    closed: list[str], stub: ExternalProcessorStub
) -> None:
    messages = [request_headers("POST", "/v1/chat/completions", {})]
    assert len([response async for response in stub.Process(iter(messages))]) == 1
    await wait_for(lambda: closed == [REQUEST_ID])


class StuckProcessor(RecordingProcessor):
    __slots__ = ()

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        await asyncio.Event().wait()  # e.g. waiting on Redis when the client goes away
        raise AssertionError("unreachable")


async def test_stream_closed_hook_runs_when_the_stream_is_cancelled_mid_phase(
    closed: list[str],
    stub: ExternalProcessorStub,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
) -> None:
    monkeypatch.setattr(server, "Processor", StuckProcessor)
    key = generate_key()
    await store_policy(redis_url, key, POLICY)
    call = stub.Process()
    await call.write(request_headers("POST", "/v1/chat/completions", bearer(key)))
    assert (await call.read()).WhichOneof("response") == "request_headers"
    await call.write(request_body({"model": "openai/gpt-5.4-mini"}))
    await asyncio.sleep(0.1)
    call.cancel()  # what Envoy does when the client goes away mid-request
    await wait_for(lambda: closed == [REQUEST_ID])


async def test_the_server_ends_the_rpc_after_the_end_of_the_response_body(
    closed: list[str], stub: ExternalProcessorStub, redis_url: str
) -> None:
    key = generate_key()
    await store_policy(redis_url, key, POLICY)
    call = stub.Process()
    await call.write(request_headers("POST", "/v1/chat/completions", bearer(key)))
    await call.read()
    await call.write(request_body({"model": "openai/gpt-5.4-mini", "messages": []}))
    await call.read()
    await call.write(
        ProcessingRequest(response_body=HttpBody(body=b'{"usage": {}}', end_of_stream=True))
    )

    assert (await call.read()).WhichOneof("response") == "response_body"
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    await wait_for(lambda: closed == [REQUEST_ID])


async def wait_for(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)
