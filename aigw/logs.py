"""One logging set-up for every aigw process: plain text for a terminal, one JSON object a line
for containers and log shippers.

    configure(log_format, level)     install the root handler on stderr
    resolve_format(configured)       `$AIGW_LOG_FORMAT` when set, else the configured format
    REQUEST_ID                       the request id in scope (a ContextVar), added to every line

A JSON line carries `ts` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`,
`process`, `request_id` when one is in scope, and `exc` for a traceback. extproc sets
`REQUEST_ID` per ext_proc stream and the control plane per HTTP request (from Envoy's
`x-request-id`). Nothing here filters secrets: the callers never log keys (API.md §2).
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, get_args

import orjson

LogFormat = Literal["text", "json"]
LOG_FORMAT_VAR = "AIGW_LOG_FORMAT"
REQUEST_ID: ContextVar[str | None] = ContextVar("aigw_request_id", default=None)

_TEXT_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s%(request_suffix)s"


class _RequestIdFilter(logging.Filter):
    """Puts the request id in scope on every record (also records of other libraries)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request_id = request_id
        record.request_suffix = f" request_id={request_id}" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _timestamp(created: float) -> str:
    """`2026-11-27T10:00:00.123Z`: UTC, milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def resolve_format(configured: str) -> LogFormat:
    """`$AIGW_LOG_FORMAT` (`text` or `json`) when set, else `configured`."""
    chosen = os.environ.get(LOG_FORMAT_VAR, "").strip().lower() or configured
    if chosen not in get_args(LogFormat):
        raise ValueError(f"{LOG_FORMAT_VAR}: must be 'text' or 'json', not {chosen!r}")
    return chosen  # type: ignore[return-value]


def configure(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Replace the root logger's handlers with one on stderr in `log_format`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for previous in root.handlers[:]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
