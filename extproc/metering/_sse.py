"""Server-sent-events framing over arbitrarily split chunks, shared by every SSE consumer.

Envoy hands the processor one message per upstream read (ENVOY-NOTES #15): an event may span
several messages and one message may hold several events, split anywhere — mid-line, mid-UTF-8
character, between the `\\r` and `\\n` of a CRLF. Lines may end in LF, CRLF or a lone CR, mixed
(Gemini uses CRLF); an event ends at its first blank line, i.e. two line terminators in a row.

Metering only needs the few events that carry usage, so nothing here visits events one by one:
`SseFramer.feed` finds the end of the last complete event with a reverse search and returns the
run of complete events (holding back only the incomplete rest), and `usage_events` finds the
events of a run that contain a usage key with forward searches for the key, each widened to its
event's bounds. Every search is a `bytes.find`/`rfind` (C speed, no per-byte Python), started
just before the new bytes, so feeding one byte at a time stays linear. A blank line that ends in
a lone `\\r` as the very last byte so far is not taken yet: the next chunk may start with its LF.

`event_data` reads the `data` field of one raw event: `data:` lines with or without the single
space after the colon, joined by LF; `event:`, `id:`, `retry:` and `:` comment lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

# Every blank line contains one of these pairs, and each of them is followed by the end of a
# blank line: at the pair's end, or one byte later when its second byte is the CR of a CRLF.
_LF_LF, _LF_CR, _CR_CR = b"\n\n", b"\n\r", b"\r\r"
_CR, _LF, _COLON = 0x0D, 0x0A, 0x3A
_LONGEST_END = 4  # b"\r\n\r\n"


def _pairs(buf: bytes | bytearray, start: int, end: int) -> tuple[bytes, ...]:
    """The pairs to look for in `buf[start:end]`: the CR ones only if it holds a CR."""
    return (_LF_LF, _LF_CR, _CR_CR) if buf.find(_CR, start, end) >= 0 else (_LF_LF,)


def _after(buf: bytes | bytearray, pair: bytes, at: int) -> int:
    """Where the blank line whose pair starts at `at` ends."""
    end = at + 2
    if pair[1] == _CR and end < len(buf) and buf[end] == _LF:
        end += 1
    return end


def _last_end(buf: bytes | bytearray, start: int) -> int:
    """The end of the last complete blank line not before `start`, or 0 if there is none."""
    limit = len(buf)
    if limit and buf[limit - 1] == _CR:  # may be the CR of a CRLF whose LF is still to come
        limit -= 1
    last = 0
    for pair in _pairs(buf, start, limit):
        at = buf.rfind(pair, start, limit)
        if at >= 0:
            last = max(last, _after(buf, pair, at))
    return last


def usage_events(buf: bytes, end: int, key: bytes) -> Iterator[tuple[int, int]]:
    """Bounds of the events that can carry usage in `buf[:end]`, a run of complete events.

    Those are the events where `key` occurs other than as `key:null` (OpenAI's placeholder in
    every chunk), in order; the key is found with a forward search, then widened to its event.
    """
    at = buf.find(key, 0, end)
    if at < 0:
        return
    pairs = _pairs(buf, 0, end)
    lo = 0
    while at >= 0:
        if buf.startswith(b":null", at + len(key)):
            at = buf.find(key, at + len(key), end)
            continue
        start, stop = lo, end
        for pair in pairs:
            before = buf.rfind(pair, lo, at)
            if before >= 0:
                start = max(start, _after(buf, pair, before))
            after = buf.find(pair, at, end)
            if after >= 0:
                stop = min(stop, _after(buf, pair, after))
        yield start, stop
        lo = stop
        at = buf.find(key, stop, end)


class SseFramer:
    """Cuts an SSE byte stream into runs of complete events; holds back only an incomplete one."""

    __slots__ = ("_held", "_scan_from")

    def __init__(self) -> None:
        self._held = bytearray()
        self._scan_from = 0

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """`(buf, end)`: `buf[:end]` is every event `chunk` completes, blank lines included.

        With nothing held back, `buf` is `chunk` itself (no copy); the bytes after `end` are
        held back until a later chunk completes their event.
        """
        held = self._held
        if not held:
            end = _last_end(chunk, 0)
            if end < len(chunk):
                held += memoryview(chunk)[end:]
                self._scan_from = max(0, len(held) - (_LONGEST_END - 1))
            return chunk, end
        held += chunk
        end = _last_end(held, self._scan_from)
        run = bytes(held[:end])
        del held[:end]
        self._scan_from = max(0, len(held) - (_LONGEST_END - 1))
        return run, end

    def flush(self) -> bytes:
        """At end of stream: the held-back bytes (an unterminated last event), then empty."""
        rest = bytes(self._held)
        self._held.clear()
        self._scan_from = 0
        return rest


def event_data(event: bytes) -> bytes:
    """The data of one raw event: its `data` field values joined by LF (b"" if none)."""
    values = []
    for line in event.splitlines():
        if line.startswith(b"data"):
            if len(line) == 4:  # `data` alone: the field with an empty value
                values.append(b"")
            elif line[4] == _COLON:
                values.append(line[6:] if line.startswith(b" ", 5) else line[5:])
    return b"\n".join(values)
