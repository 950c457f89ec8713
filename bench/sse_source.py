"""The benchmark's streaming fake provider: OpenAI chat-completion SSE over HTTP/1.1 keep-alive.

    python -m bench.sse_source --port N [--chunks 50] [--interval-ms 5]

A bare asyncio protocol on uvloop (no framework: the source must cost far less than what it
feeds). Every request, whatever its path, is answered 200 with a chunked `text/event-stream` of
`--chunks` content chunks, a usage-only chunk and `[DONE]`, each event its own HTTP chunk and its
own `write`. Between two events the source yields to the event loop (`call_soon`) — or, when the
request body names a model containing `paced`, waits `--interval-ms` (`call_later`), like a real
model emitting tokens. Request bodies may come with `content-length` or chunked.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import uvloop

from bench.payloads import PACED_MARKER, sse_events

_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
    b"openai-processing-ms: 1\r\n"
    b"\r\n"
)
_END = b"0\r\n\r\n"


def http_chunks(chunks: int) -> list[bytes]:
    """The writes of one response: head + first event, each further event, then the end."""
    framed = [b"%x\r\n%s\r\n" % (len(event), event) for event in sse_events(chunks)]
    framed[0] = _HEAD + framed[0]
    framed[-1] += _END
    return framed


def parse_request(buffer: bytearray) -> tuple[int, bool] | None:
    """`(bytes consumed, paced)` for the first complete request in `buffer`, or None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    start = end + 4
    if b"transfer-encoding: chunked" in head:
        return _parse_chunked(buffer, start)
    length = 0
    marker = head.find(b"content-length:")
    if marker >= 0:
        line_end = head.find(b"\r\n", marker)
        length = int(head[marker + 15 : line_end if line_end >= 0 else None])
    if len(buffer) < start + length:
        return None
    return start + length, PACED_MARKER.encode() in buffer[start : start + length]


def _parse_chunked(buffer: bytearray, position: int) -> tuple[int, bool] | None:
    paced = False
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        data_start = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", data_start)
            return None if trailer_end < 0 else (trailer_end + 2, paced)
        if len(buffer) < data_start + size + 2:
            return None
        paced = paced or PACED_MARKER.encode() in buffer[data_start : data_start + size]
        position = data_start + size + 2


class StreamingProtocol(asyncio.Protocol):
    """One client connection: answers its requests one after the other."""

    def __init__(self, chunks: list[bytes], interval_s: float) -> None:
        self._chunks = chunks
        self._interval_s = interval_s
        self._buffer = bytearray()
        self._busy = False
        self._paced = False
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _next_request(self) -> None:
        parsed = parse_request(self._buffer)
        if parsed is None:
            return
        consumed, self._paced = parsed
        del self._buffer[:consumed]
        self._busy = True
        self._send(0)

    def _send(self, index: int) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(self._chunks[index])
        if index + 1 == len(self._chunks):
            self._busy = False
            self._next_request()
        elif self._paced:
            self._loop.call_later(self._interval_s, self._send, index + 1)
        else:
            self._loop.call_soon(self._send, index + 1)


async def serve(host: str, port: int, chunks: int, interval_ms: float) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    framed = http_chunks(chunks)
    server = await loop.create_server(
        lambda: StreamingProtocol(framed, interval_ms / 1000), host, port, backlog=1024
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_source", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="pause of paced streams")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.chunks, args.interval_ms))


if __name__ == "__main__":
    main()
