"""Entries of the usage streams (docs/internals.md, "Usage streams") read into the rows the
ingester writes: ledger rows and event-outbox rows. Pure functions, no I/O.

    parse_entry(stream_id, fields) -> Parsed            raises MalformedEntry

An entry is one field `e` holding a JSON object with `type` `usage`, `budget` or `rate_limited`.
Reading is strict about what would corrupt the ledger (a missing id, a negative amount, text
PostgreSQL cannot store) and lenient about encodings a Lua script may produce: an empty JSON
object for an empty list (cjson), integral floats and digit strings for integers.

Events (the webhook dispatcher's outbox) and their dedupe keys:
- `sub_account.budget.warning` / `.exhausted`: a usage entry's `crossed` (80, 100) or a `budget`
  entry; once per sub-account and period: `budget:<80|100>:<sub_account_id>:<period>`.
- `sub_account.rate_limited`: once per sub-account and minute (extproc already debounces to one
  a minute; the key also holds after Redis lost the debounce): `rate_limited:<sa>:<minute>`.
- `sub_account.request.failed`: a sub-account's usage with status >= 500 (a provider error or
  Envoy's 504 on an upstream timeout) or an `abort_reason` that blames the provider;
  `request.failed:<request_id>`.
A parent's own traffic (no sub-account) makes ledger rows but no `sub_account.*` event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from aigw.money import microcents_to_cents

BUDGET_EVENTS = {80: "sub_account.budget.warning", 100: "sub_account.budget.exhausted"}
RATE_LIMITED = "sub_account.rate_limited"
REQUEST_FAILED = "sub_account.request.failed"
# `abort_reason` values (optional in a usage entry) that make an aborted request a failure of
# the provider rather than of the client.
PROVIDER_ABORTS = frozenset({"provider_timeout", "provider_error", "upstream_reset", "timeout"})
RATE_LIMITS = frozenset({"rpm", "rpd", "tpm"})

MAX_TEXT = 1024
MAX_TAGS = 64
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1
_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_FIELD = b"e"


class MalformedEntry(ValueError):
    """The entry cannot be read; the message says why, never what it contained."""


@dataclass(slots=True)
class EventRow:
    """`parent_id` None: the ingester takes the sub-account's (admission may not know it)."""

    type: str
    parent_id: str | None
    sub_account_id: str | None
    dedupe_key: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(slots=True)
class Parsed:
    ledger: dict[str, Any] | None = None
    events: list[EventRow] = field(default_factory=list)


def parse_entry(stream_id: str, fields: dict[bytes, bytes] | None) -> Parsed:
    """The rows one stream entry yields."""
    if not fields or _FIELD not in fields:
        raise MalformedEntry("no field 'e'")
    try:
        body = orjson.loads(fields[_FIELD])
    except orjson.JSONDecodeError:
        raise MalformedEntry("field 'e' is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedEntry("field 'e' is not a JSON object")
    kind = body.get("type")
    if kind == "usage":
        return _usage(body)
    if kind == "budget":
        return Parsed(events=[_budget(body)])
    if kind == "rate_limited":
        return Parsed(events=[_rate_limited(body)])
    raise MalformedEntry(f"unknown type {_shown(kind)}")


def _usage(body: dict[str, Any]) -> Parsed:
    request_id = _text(body, "request_id")
    parent_id = _text(body, "parent_id")
    sub_account_id = _optional_text(body, "sub_account_id")
    model = _text(body, "model")
    provider = _optional_text(body, "provider") or model.partition("/")[0]
    finished_ms = _epoch_ms(body, "finished_at")
    started_ms = _epoch_ms(body, "started_at", required=False)
    status = _integer(body, "status", maximum=999)
    aborted = _bool(body, "aborted")
    period = _optional_text(body, "period")
    ledger = {
        "request_id": request_id,
        "parent_id": parent_id,
        "sub_account_id": sub_account_id,
        "tags": _tags(body.get("tags")),
        "model": model,
        "provider": provider,
        "endpoint": _optional_text(body, "endpoint") or "",
        "status": status,
        "input_tokens": _integer(body, "input_tokens", default=0),
        "cached_input_tokens": _integer(body, "cached_input_tokens", default=0),
        "cache_write_tokens": _integer(body, "cache_write_tokens", default=0),
        "output_tokens": _integer(body, "output_tokens", default=0),
        "cost_microcents": _integer(body, "cost_microcents"),
        "fee_microcents": _integer(body, "fee_microcents", default=0),
        "byok": _bool(body, "byok"),
        "stream": _bool(body, "stream"),
        "aborted": aborted,
        "latency_ms": _integer(body, "latency_ms", default=None, maximum=_MAX_INT),
        "started_at": None if started_ms is None else _iso(started_ms),
        "finished_at": _iso(finished_ms),
        "period": period,
    }
    parsed = Parsed(ledger=ledger)
    if sub_account_id is None:
        return parsed
    at = _moment(finished_ms)
    for threshold in _thresholds(body.get("crossed")):
        if period is None:
            raise MalformedEntry("'crossed' without 'period'")
        payload = {"sub_account_id": sub_account_id, "threshold": threshold, "period": period}
        payload["request_id"] = request_id
        parsed.events.append(
            _budget_event(threshold, parent_id, sub_account_id, period, payload, at)
        )
    abort_reason = _optional_text(body, "abort_reason")
    if status >= 500 or (aborted and abort_reason in PROVIDER_ABORTS):
        payload = {
            "sub_account_id": sub_account_id,
            "request_id": request_id,
            "status": status,
            "model": model,
            "provider": provider,
            "endpoint": ledger["endpoint"],
            "aborted": aborted,
            "latency_ms": ledger["latency_ms"],
        }
        if abort_reason is not None:
            payload["abort_reason"] = abort_reason
        parsed.events.append(
            EventRow(
                REQUEST_FAILED,
                parent_id,
                sub_account_id,
                f"request.failed:{request_id}",
                payload,
                at,
            )
        )
    return parsed


def _budget(body: dict[str, Any]) -> EventRow:
    sub_account_id = _text(body, "sub_account_id")
    parent_id = _optional_text(body, "parent_id")
    period = _text(body, "period")
    threshold = _integer(body, "threshold")
    if threshold not in BUDGET_EVENTS:
        raise MalformedEntry("'threshold' is neither 80 nor 100")
    payload: dict[str, Any] = {
        "sub_account_id": sub_account_id,
        "threshold": threshold,
        "period": period,
    }
    spent = _integer(body, "spent_microcents", default=None)
    cap = _integer(body, "cap_microcents", default=None)
    if spent is not None:
        payload["spent_cents"] = microcents_to_cents(spent)
    if cap is not None:
        payload["spend_cap_cents"] = microcents_to_cents(cap)
    at = _moment(_epoch_ms(body, "at"))
    return _budget_event(threshold, parent_id, sub_account_id, period, payload, at)


def _budget_event(
    threshold: int,
    parent_id: str | None,
    sub_account_id: str,
    period: str,
    payload: dict[str, Any],
    at: datetime,
) -> EventRow:
    dedupe = budget_key(threshold, sub_account_id, period)
    return EventRow(BUDGET_EVENTS[threshold], parent_id, sub_account_id, dedupe, payload, at)


def budget_key(threshold: int, sub_account_id: str, period: str) -> str:
    """The dedupe key of a budget event: once per sub-account, threshold and period."""
    return f"budget:{threshold}:{sub_account_id}:{period}"


def _rate_limited(body: dict[str, Any]) -> EventRow:
    sub_account_id = _text(body, "sub_account_id")
    parent_id = _optional_text(body, "parent_id")
    limit = _text(body, "limit")
    if limit not in RATE_LIMITS:
        raise MalformedEntry("'limit' is not rpm, rpd or tpm")
    at_ms = _epoch_ms(body, "at")
    return EventRow(
        RATE_LIMITED,
        parent_id,
        sub_account_id,
        f"rate_limited:{sub_account_id}:{at_ms // 60_000}",
        {"sub_account_id": sub_account_id, "limit": limit},
        _moment(at_ms),
    )


# Field readers


def _shown(value: Any) -> str:
    """A short, printable rendering of an unexpected value for a log line."""
    return repr(value)[:40]


def _check_text(name: str, value: str) -> str:
    if "\x00" in value or len(value) > MAX_TEXT:
        raise MalformedEntry(f"'{name}' is not storable text")
    return value


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEntry(f"'{name}' is missing or not a string")
    return _check_text(name, value)


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedEntry(f"'{name}' is not a string")
    return _check_text(name, value)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    return None


_REQUIRED: Any = object()


def _integer(
    body: dict[str, Any], name: str, *, default: Any = _REQUIRED, maximum: int = _MAX_BIGINT
) -> Any:
    value = body.get(name)
    if value is None:
        if default is _REQUIRED:
            raise MalformedEntry(f"'{name}' is missing")
        return default
    number = _as_int(value)
    if number is None or not 0 <= number <= maximum:
        raise MalformedEntry(f"'{name}' is not an integer from 0 to {maximum}")
    return number


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise MalformedEntry(f"'{name}' is not a boolean")


def _epoch_ms(body: dict[str, Any], name: str, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    number = _as_int(value)
    if number is None or not 0 < number <= _MAX_EPOCH_MS:
        raise MalformedEntry(f"'{name}' is not a time in epoch milliseconds")
    return number


def _moment(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _iso(epoch_ms: int) -> str:
    """Exact to the millisecond (no float rounding), for jsonb_populate_recordset."""
    seconds, millis = divmod(epoch_ms, 1000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)
    return moment.isoformat()


def _list(value: Any, name: str) -> list[Any]:
    if value is None or value == {}:  # cjson writes an empty Lua table as {}
        return []
    if not isinstance(value, list):
        raise MalformedEntry(f"'{name}' is not a list")
    return value


def _tags(value: Any) -> list[str]:
    """Distinct, in their order; empty strings dropped."""
    tags: list[str] = []
    for tag in _list(value, "tags"):
        if not isinstance(tag, str):
            raise MalformedEntry("'tags' holds a non-string")
        if tag and tag not in tags:
            tags.append(_check_text("tags", tag))
    if len(tags) > MAX_TAGS:
        raise MalformedEntry(f"more than {MAX_TAGS} tags")
    return tags


def _thresholds(value: Any) -> list[int]:
    thresholds: list[int] = []
    for item in _list(value, "crossed"):
        number = _as_int(item)
        if number not in BUDGET_EVENTS:
            raise MalformedEntry("'crossed' holds a threshold other than 80 or 100")
        if number not in thresholds:
            thresholds.append(number)
    return sorted(thresholds)


def dumps(value: Any) -> str:
    """JSON text; a Decimal (cents) is written as an exact JSON number."""
    return orjson.dumps(value, default=_decimal).decode()


def _decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
