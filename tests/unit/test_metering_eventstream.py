"""Bedrock eventstream framing: CRCs, header types and frames that are not usage."""

from __future__ import annotations

import base64
import struct
import zlib

import orjson

from extproc.metering import BedrockStreamParser, Usage

METADATA = orjson.dumps({"usage": {"inputTokens": 52, "outputTokens": 36}, "p": "abc"})
USAGE = Usage(52, 0, 0, 36, reported=True)


def header(name: str, kind: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name.encode() + bytes([kind]) + value


def string_header(name: str, value: str) -> bytes:
    return header(name, 7, len(value).to_bytes(2, "big") + value.encode())


def frame(payload: bytes, event_type: str = "metadata", *extra_headers: bytes) -> bytes:
    headers = b"".join(
        [
            *extra_headers,
            string_header(":event-type", event_type),
            string_header(":content-type", "application/json"),
            string_header(":message-type", "event"),
        ]
    )
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def meter(*chunks: bytes) -> Usage:
    parser = BedrockStreamParser()
    for chunk in chunks:
        parser.feed(chunk)
    return parser.finish()


def test_every_header_type_is_skipped_over() -> None:
    others = [
        header("t", 0, b""),
        header("f", 1, b""),
        header("b", 2, b"\x01"),
        header("s", 3, b"\x00\x02"),
        header("i", 4, b"\x00" * 4),
        header("l", 5, b"\x00" * 8),
        header("raw", 6, b"\x00\x03abc"),
        header("ts", 8, b"\x00" * 8),
        header("id", 9, b"\x00" * 16),
    ]
    assert meter(frame(METADATA, "metadata", *others)) == USAGE


def test_a_frame_with_a_bad_message_crc_is_skipped() -> None:
    bad = bytearray(frame(METADATA))
    bad[-1] ^= 0xFF
    good = frame(orjson.dumps({"usage": {"inputTokens": 1, "outputTokens": 2}}))
    assert meter(bytes(bad)) == Usage()
    assert meter(bytes(bad) + good) == Usage(1, 0, 0, 2, reported=True)


def test_a_bad_prelude_crc_stops_reading_but_keeps_what_was_metered() -> None:
    bad = bytearray(frame(orjson.dumps({"usage": {"inputTokens": 1, "outputTokens": 2}})))
    bad[8] ^= 0xFF
    assert meter(frame(METADATA), bytes(bad), frame(METADATA)) == USAGE
    assert meter(bytes(bad) + frame(METADATA)) == Usage()


def test_exceptions_and_undecodable_chunks_are_not_usage() -> None:
    exception = frame(METADATA).replace(b"\x05event", b"\x05error")
    exception = exception[:-4] + struct.pack(">I", zlib.crc32(exception[:-4]))
    not_base64 = frame(b'{"bytes":"%%%"}', "chunk")
    not_json = frame(b'{"bytes":' + b'"' + base64.b64encode(b'{"usage":') + b'"}', "chunk")
    assert meter(exception, not_base64, not_json) == Usage()


def test_a_wrapped_anthropic_event_split_anywhere() -> None:
    event = orjson.dumps({"type": "message_delta", "usage": {"output_tokens": 21}})
    body = frame(orjson.dumps({"bytes": base64.b64encode(event).decode(), "p": "ab"}), "chunk")
    for i in range(len(body) + 1):
        assert meter(body[:i], body[i:]) == Usage(0, 0, 0, 21, reported=True)
