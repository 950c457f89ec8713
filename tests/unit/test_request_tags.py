"""The `x-aig-tags` header rule and the tag set a request is metered under."""

from __future__ import annotations

import pytest

from aigw.errors import GatewayError
from extproc.request_tags import parse_tags_header, request_tags


def test_items_are_trimmed_and_empty_items_ignored() -> None:
    assert parse_tags_header([b" feature:chat , ,env=prod,"]) == ("feature:chat", "env=prod")


def test_repeated_headers_and_repeated_tags_make_one_list() -> None:
    assert parse_tags_header([b"a,b", b"b, c"]) == ("a", "b", "c")


def test_no_header_or_only_commas_means_no_tags() -> None:
    assert parse_tags_header([]) == ()
    assert parse_tags_header([b" , ,"]) == ()


def test_every_allowed_character_and_the_longest_tag_pass() -> None:
    tag = "Az09_.:/=@+-" + "x" * 52
    assert parse_tags_header([tag.encode()]) == (tag,)


def test_ten_distinct_tags_pass() -> None:
    header = ",".join(f"t{i}" for i in range(10)).encode()
    assert len(parse_tags_header([header])) == 10


@pytest.mark.parametrize(
    "header",
    [
        b",".join(b"t%d" % i for i in range(11)),
        b"x" * 65,
        b"has space",
        b"semi;colon",
        b'quote"d',
        "caf\u00e9".encode(),
        b"nul\x00",
    ],
    ids=["eleven-tags", "65-chars", "space", "semicolon", "quote", "non-ascii", "nul"],
)
def test_a_header_outside_the_rule_is_a_400_naming_the_header(header: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_tags_header([header])
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "invalid_request", "x-aig-tags")
    assert "at most 10 tags" in error.message
    assert "1 to 64 characters" in error.message


def test_request_tags_add_the_default_tag_distinct_and_sorted() -> None:
    assert request_tags("tenant:42", ("z", "a", "tenant:42")) == ("a", "tenant:42", "z")
    assert request_tags(None, ("b", "a")) == ("a", "b")
    assert request_tags(None, ()) == ()
