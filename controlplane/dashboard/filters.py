"""What the dashboard's GET forms ask for, read leniently: a value that does not parse is dropped
(and the form shows it empty) rather than answered with an error page.

    month_options(first, now) -> [date]        the months a parent can pick, newest first
    month_choice(text, options) -> date        the overview's month (its first day)
    LogQuery.from_params(params) -> LogQuery   the request log's filters
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from controlplane.usage_queries import RequestStatus, UsageFilters, next_month

MONTHS_SHOWN = 24
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_SUB_ACCOUNT_ID = re.compile(r"^sa_[A-Za-z0-9]{1,64}$")
_MAX_TEXT = 200
STATUSES: tuple[RequestStatus, ...] = ("ok", "failed")


def month_options(first: datetime, now: datetime) -> list[date]:
    """First days of the months from `now`'s back to `first`'s, newest first (at most 24)."""
    month = now.astimezone(UTC).date().replace(day=1)
    oldest = first.astimezone(UTC).date().replace(day=1)
    months = [month]
    while month > oldest and len(months) < MONTHS_SHOWN:
        month = (month - timedelta(days=1)).replace(day=1)
        months.append(month)
    return months


def month_choice(text: str | None, options: list[date]) -> date:
    """The month `YYYY-MM` names if it is one of `options`, else the newest option."""
    match = _MONTH.match(text or "")
    if match:
        year, month = int(match.group(1)), int(match.group(2))
        if 1 <= month <= 12 and date(year, month, 1) in options:
            return date(year, month, 1)
    return options[0]


def month_range(month: date) -> tuple[datetime, datetime]:
    start = datetime.combine(month, time(0), tzinfo=UTC)
    return start, datetime.combine(next_month(month), time(0), tzinfo=UTC)


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name, "").strip()
    return value if value and len(value) <= _MAX_TEXT and value.isprintable() else None


def _day(params: Mapping[str, str], name: str) -> date | None:
    try:
        return date.fromisoformat(params.get(name, "").strip())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class LogQuery:
    """The request log's filters as the form shows them; `start`/`end` are inclusive UTC days."""

    sub_account_id: str | None = None
    model: str | None = None
    tag: str | None = None
    status: RequestStatus | None = None
    start: date | None = None
    end: date | None = None
    after: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> LogQuery:
        sub_account_id = _text(params, "sub_account")
        status = _text(params, "status")
        return cls(
            sub_account_id=sub_account_id if _SUB_ACCOUNT_ID.match(sub_account_id or "") else None,
            model=_text(params, "model"),
            tag=_text(params, "tag"),
            status=next((known for known in STATUSES if known == status), None),
            start=_day(params, "start"),
            end=_day(params, "end"),
            after=_text(params, "after"),
        )

    def usage_filters(self, parent_id: str) -> UsageFilters:
        start = datetime.combine(self.start, time(0), tzinfo=UTC) if self.start else None
        end = None
        if self.end is not None:
            end = datetime.combine(self.end + timedelta(days=1), time(0), tzinfo=UTC)
        return UsageFilters(
            parent_id=parent_id,
            sub_account_id=self.sub_account_id,
            tag=self.tag,
            model=self.model,
            start=start,
            end=end,
        )

    def params(self, **changes: str | None) -> dict[str, str]:
        """The query string of these filters (with `changes`), empty values left out."""
        values = {
            "sub_account": self.sub_account_id,
            "model": self.model,
            "tag": self.tag,
            "status": self.status,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "after": self.after,
        }
        values |= changes
        return {name: value for name, value in values.items() if value}

    @property
    def is_filtered(self) -> bool:
        return any((self.sub_account_id, self.model, self.tag, self.status, self.start, self.end))
