"""Per-request tags: the `x-aig-tags` request header (a comma list) checked against its rule,
and merged with the sub-account's default tag into the tag set a request is metered under.

The rule: items are trimmed and empty items ignored; at most `MAX_TAGS` distinct tags, each
1 to `MAX_TAG_LENGTH` characters of `A-Z a-z 0-9 _ . : / = @ + -`. Anything else is a 400
`invalid_request` naming the header, before the request reaches a provider.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aigw.errors import GatewayError, invalid_request

TAGS_HEADER = "x-aig-tags"
MAX_TAGS = 10
MAX_TAG_LENGTH = 64
_TAG = re.compile(rf"[A-Za-z0-9_.:/=@+\-]{{1,{MAX_TAG_LENGTH}}}")
_RULE = (
    f"a comma-separated list of at most {MAX_TAGS} tags, each 1 to {MAX_TAG_LENGTH} characters"
    " of A-Z a-z 0-9 _ . : / = @ + -"
)


def _bad(problem: str) -> GatewayError:
    return invalid_request(
        f"Invalid '{TAGS_HEADER}' header: {problem}; it must be {_RULE}.", TAGS_HEADER
    )


def parse_tags_header(values: Iterable[bytes]) -> tuple[str, ...]:
    """The distinct tags of every `x-aig-tags` header value (repeated headers are one list),
    in the order given. GatewayError (400) when the header breaks the rule."""
    tags: list[str] = []
    for value in values:
        for item in value.decode("latin-1").split(","):
            tag = item.strip()
            if not tag:
                continue
            if not _TAG.fullmatch(tag):
                shown = tag[:MAX_TAG_LENGTH].encode("unicode_escape").decode("ascii")
                raise _bad(f"'{shown}' is not a valid tag")
            if tag not in tags:
                tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise _bad(f"{len(tags)} tags given")
    return tuple(tags)


def request_tags(default_tag: str | None, header_tags: Iterable[str]) -> tuple[str, ...]:
    """The request's tag set: the default tag and the header's tags, distinct and sorted."""
    tags = set(header_tags)
    if default_tag:
        tags.add(default_tag)
    return tuple(sorted(tags))
