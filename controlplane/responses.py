"""JSON responses that keep money exact: a `Decimal` amount (cents, up to six decimals) is
written as a JSON number with exactly its digits — FastAPI's own encoder would turn it into a
binary float first (API.md §5: money is never kept in binary floating point)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from fastapi.responses import JSONResponse


def _number(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, default=_number)


class ExactJSONResponse(JSONResponse):
    """Return it from a route (not a dict), so that FastAPI does not re-encode the content."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
