"""SSE framing edge cases the recordings do not cover, checked at every split point."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from extproc.metering import ChatStreamRewriter, Usage, parser_for
from extproc.metering._sse import event_data

CONTENT = b'{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"h\xc3\xa9"}}],"usage":null}'  # noqa: E501
USAGE_OBJ = (
    b'{"prompt_tokens":30,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":10}}'
)
USAGE_ONLY = b'{"id":"c1","choices":[],"usage":' + USAGE_OBJ + b"}"
USAGE = Usage(20, 10, 0, 7, reported=True)


T = TypeVar("T")


def every_split(body: bytes, feed_all: Callable[[list[bytes]], T]) -> Iterator[tuple[int | str, T]]:
    """`feed_all` of the body in two parts at every split point, then one byte at a time."""
    for i in range(len(body) + 1):
        yield i, feed_all([body[:i], body[i:]])
    yield "bytes", feed_all([body[i : i + 1] for i in range(len(body))])


def meter(chunks: list[bytes]) -> Usage:
    parser = parser_for("openai_chat", streaming=True)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.finish()


def rewrite(chunks: list[bytes]) -> tuple[bytes, Usage]:
    rewriter = ChatStreamRewriter(strip_usage=True)
    out = b"".join(rewriter.feed(chunk) for chunk in chunks)
    rest, usage = rewriter.finish()
    return out + rest, usage


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings_comments_fields_and_done(eol: bytes) -> None:
    head = b"".join(
        [
            b": keep-alive comment" + eol + eol,
            b"event: message" + eol + b"id: 1" + eol + b"data:" + CONTENT + eol + eol,
            b"retry: 100" + eol + eol,
        ]
    )
    usage_event = b"data: " + USAGE_ONLY + eol + eol
    done = b"data: [DONE]" + eol + eol
    body = head + usage_event + done
    for split, result in every_split(body, meter):
        assert result == USAGE, split
    for split, result in every_split(body, rewrite):
        assert result == (head + done, USAGE), split


def test_mixed_line_endings_and_data_split_over_lines() -> None:
    usage_event = b'data: {"choices":[],\r\ndata: "usage":' + USAGE_OBJ + b"}\n\r\n"
    body = b"data: " + CONTENT + b"\r\n\n" + usage_event + b"data: [DONE]\r\r"
    for split, result in every_split(body, rewrite):
        assert result == (body.replace(usage_event, b""), USAGE), split


def test_a_usage_event_without_its_final_blank_line_is_still_metered() -> None:
    body = b"data: " + CONTENT + b"\n\ndata: " + USAGE_ONLY
    for split, result in every_split(body, meter):
        assert result == USAGE, split
    for split, result in every_split(body, rewrite):
        assert result == (b"data: " + CONTENT + b"\n\n", USAGE), split


def test_a_stream_cut_before_its_usage_reports_nothing() -> None:
    assert meter([b"data: " + CONTENT + b"\n\ndata: " + USAGE_ONLY[:50]]) == Usage()


def test_a_lone_cr_at_the_end_of_a_chunk_waits_for_a_possible_lf() -> None:
    rewriter = ChatStreamRewriter(strip_usage=True)
    assert rewriter.feed(b"data: " + USAGE_ONLY + b"\r\n\r") == b""
    assert rewriter.feed(b"\ndata: [DONE]\r\n\r\n") == b"data: [DONE]\r\n\r\n"
    assert rewriter.finish() == (b"", USAGE)


def test_usage_chunks_with_choices_or_choices_without_usage_are_kept() -> None:
    with_choices = b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":3}}\n\n'
    azure_filter = b'data: {"choices":[],"prompt_filter_results":[]}\n\n'
    body = azure_filter + with_choices
    rewriter = ChatStreamRewriter(strip_usage=True)
    assert rewriter.feed(body) is body
    assert rewriter.finish() == (b"", Usage(3, 0, 0, 0, reported=True))


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: x\n\n", b"x"),
        (b"data:x\n\n", b"x"),
        (b"data:  x\n\n", b" x"),
        (b"data\n\n", b""),
        (b"data: a\r\ndata: b\r\n\r\n", b"a\nb"),
        (b"event: ping\ndatabase: no\n: data: no\ndata: {}\n\n", b"{}"),
        (b"id: 7\n\n", b""),
    ],
)
def test_event_data(event: bytes, data: bytes) -> None:
    assert event_data(event) == data
