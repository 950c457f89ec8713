"""Budget periods (UTC calendar arithmetic) and the validation messages of the control plane."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from controlplane.clock import iso_z
from controlplane.errors import validation_error
from controlplane.schemas import SubAccountCreate, SubAccountFields
from controlplane.spend import period_bounds

CREATED = datetime(2025, 6, 15, 8, 30, 12, 345678, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("monthly", "2026-11-27T10:00:00+00:00", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("monthly", "2026-12-31T23:59:59+00:00", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("monthly", "2026-03-01T00:30:00+01:00", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
        ("weekly", "2026-11-27T10:00:00+00:00", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
        ("weekly", "2026-11-23T00:00:00+00:00", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
        ("weekly", "2026-11-29T23:59:59+00:00", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
        ("daily", "2026-11-27T23:59:59+00:00", "2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z"),
        ("total", "2026-11-27T10:00:00+00:00", "2025-06-15T08:30:12Z", None),
    ],
)
def test_period_bounds(period: str, now: str, start: str, end: str | None) -> None:
    period_start, resets_at = period_bounds(period, CREATED, at(now))
    assert (iso_z(period_start), iso_z(resets_at)) == (start, end)


def test_period_bounds_contain_now_at_every_hour_of_a_year() -> None:
    moment = datetime(2027, 1, 1, tzinfo=UTC)
    while moment.year == 2027:
        for period in ("monthly", "weekly", "daily"):
            start, end = period_bounds(period, CREATED, moment)
            assert end is not None and start <= moment < end
        moment += timedelta(hours=7)


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError):
        period_bounds("yearly", CREATED, CREATED)


def test_iso_z_is_utc_whole_seconds() -> None:
    moment = datetime(2026, 11, 27, 11, 0, 0, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert iso_z(moment) == "2026-11-27T10:00:00Z"
    assert iso_z(None) is None


def test_given_fields_keep_explicit_nulls_only() -> None:
    body = SubAccountFields.model_validate({"spend_cap_cents": None, "tier": "free"})
    assert body.given() == {"spend_cap_cents": None, "tier": "free"}


def test_naive_times_are_taken_as_utc() -> None:
    body = SubAccountCreate.model_validate({"name": "a", "expires_at": "2030-01-01T00:00:00"})
    assert body.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_validation_message_names_the_nested_field() -> None:
    try:
        SubAccountCreate.model_validate({"name": "a", "allowed_models": ["ok", ""]})
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        error = validation_error(RequestValidationError(errors))
    assert error.param == "allowed_models.1"
    assert error.message.startswith("allowed_models.1: ")
    assert error.status == 400
