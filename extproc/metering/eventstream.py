"""Bedrock streaming usage: AWS `application/vnd.amazon.eventstream` frames, split anywhere.

A frame (all integers big-endian):

    total length  u32  the whole frame, prelude and message CRC included
    headers len   u32
    prelude CRC   u32  CRC32 of the 8 bytes above
    headers            name len u8, name, value type u8, value (strings: u16 length + bytes)
    payload            total - headers - 16 bytes; JSON for Bedrock
    message CRC   u32  CRC32 of everything before it

Only the frames whose payload can carry usage are read further: their message CRC is checked
(a wrong one skips the frame) and their headers parsed; only `:message-type: event` frames count
(exceptions carry no usage). A wrong prelude CRC means the lengths cannot be trusted, so nothing
after it can be framed: the parser stops reading and settles what it had. ConverseStream puts
usage in the `metadata` event's payload; InvokeModelWithResponseStream sends `chunk` events whose
payload `{"bytes": base64, "p": padding}` wraps one Anthropic Messages event. Both are handed to
`providers.bedrock`.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib

import orjson

from extproc.metering import providers
from extproc.metering.usage import Tally, Usage

_PRELUDE = struct.Struct(">III")  # total length, headers length, prelude CRC
_CRC = struct.Struct(">I")
_MIN_FRAME = _PRELUDE.size + _CRC.size
_STRING = 7
# Bytes of the value of each fixed-size header type (0/1 bool, 2 byte, 3 short, 4 int,
# 5 long, 8 timestamp, 9 uuid); types 6 (bytes) and 7 (string) have a u16 length first.
_FIXED_SIZE = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_LENGTH_PREFIXED = (6, _STRING)


def _string_headers(view: memoryview, start: int, end: int) -> dict[bytes, bytes] | None:
    """The string-valued headers in `view[start:end]`; None if they are malformed."""
    headers: dict[bytes, bytes] = {}
    at = start
    while at < end:
        name_end = at + 1 + view[at]
        if name_end >= end:
            return None
        name, kind, at = view[at + 1 : name_end].tobytes(), view[name_end], name_end + 1
        if kind in _LENGTH_PREFIXED:
            size = int.from_bytes(view[at : at + 2], "big")
            if kind == _STRING:
                headers[name] = view[at + 2 : at + 2 + size].tobytes()
            at += 2 + size
        elif kind in _FIXED_SIZE:
            at += _FIXED_SIZE[kind]
        else:
            return None
    return headers if at == end else None


class BedrockStreamParser:
    """Usage of a Bedrock eventstream body (ConverseStream or InvokeModelWithResponseStream)."""

    __slots__ = ("_broken", "_buf", "_tally")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken = False
        self._tally = Tally()

    def feed(self, chunk: bytes) -> None:
        if self._broken:
            return
        buf = self._buf
        buf += chunk
        at = 0
        with memoryview(buf) as view:
            while len(buf) - at >= _PRELUDE.size:
                total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, at)
                if (
                    zlib.crc32(view[at : at + 8]) != prelude_crc
                    or total < _MIN_FRAME
                    or headers_len > total - _MIN_FRAME
                ):
                    self._broken = True
                    break
                if len(buf) - at < total:
                    break
                self._frame(buf, view, at, at + total, at + _PRELUDE.size + headers_len)
                at += total
        if self._broken:
            buf.clear()
        else:
            del buf[:at]

    def _frame(self, buf: bytearray, view: memoryview, at: int, end: int, payload_at: int) -> None:
        """Read one whole frame `buf[at:end]` if it can carry usage and its CRC is right."""
        crc_at = end - 4
        wrapped = buf.find(b'"bytes"', payload_at, crc_at) >= 0
        if not wrapped and buf.find(b'"usage"', payload_at, crc_at) < 0:
            return
        if zlib.crc32(view[at:crc_at]) != _CRC.unpack_from(buf, crc_at)[0]:
            return
        headers = _string_headers(view, at + _PRELUDE.size, payload_at)
        if headers is None or headers.get(b":message-type") != b"event":
            return
        payload = view[payload_at:crc_at]
        try:
            if wrapped and headers.get(b":event-type") == b"chunk":
                value = orjson.loads(payload)
                encoded = value.get("bytes") if isinstance(value, dict) else None
                if not isinstance(encoded, str):
                    return
                event = base64.b64decode(encoded, validate=True)
                if b'"usage"' in event or b"invocationMetrics" in event:
                    providers.bedrock(orjson.loads(event), self._tally)
            else:
                providers.bedrock(orjson.loads(payload), self._tally)
        except (orjson.JSONDecodeError, binascii.Error):
            return

    def finish(self) -> Usage:
        return self._tally.usage()
