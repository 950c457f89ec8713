"""Request bodies and response shapes of the control plane (API.md §6).

Inputs are strict (no `true` for an integer, no unknown field) and every string must be text
PostgreSQL can store, so bad input is a 400 naming the field and never a 500. Responses are
declared for the OpenAPI document.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from aigw.config import BudgetPeriod

MAX_CENTS = 2**53 - 1  # exact in every JSON client
MAX_RATE = 2**31 - 1
MAX_GRACE_SECONDS = 7 * 24 * 3600
MAX_METADATA_KEYS = 50
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 10
Status = Literal["active", "disabled"]
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def clean_text(value: str) -> str:
    """Reject what PostgreSQL text cannot hold: NUL and lone surrogates."""
    if "\x00" in value:
        raise PydanticCustomError("text_nul", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("text_unicode", "must be valid Unicode text") from None
    return value


def _check_json(value: Any, depth: int = 0) -> None:
    """Plain JSON only: clean text, finite numbers, integers within 64 bits, bounded nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise PydanticCustomError("metadata_depth", f"at most {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, str):
        clean_text(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise PydanticCustomError("metadata_number", "integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("metadata_number", "numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            clean_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_METADATA_KEYS:
        raise PydanticCustomError("metadata_size", f"at most {MAX_METADATA_KEYS} keys")
    _check_json(value)
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise PydanticCustomError("metadata_size", f"at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


def _utc(value: datetime) -> datetime:
    """A time without offset is taken as UTC; years 1970 to 9998 only."""
    try:
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not _EARLIEST <= moment < _LATEST:
        raise PydanticCustomError("datetime_range", "must be between 1970 and 9998")
    return moment


Text = Annotated[StrictStr, Field(min_length=1, max_length=200), AfterValidator(clean_text)]
Cents = Annotated[StrictInt, Field(ge=0, le=MAX_CENTS)]
Rate = Annotated[StrictInt, Field(ge=1, le=MAX_RATE)]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
Moment = Annotated[datetime, AfterValidator(_utc)]

_NOT_NULL = ("name", "budget_period", "allowed_models", "metadata", "byok")


class SubAccountFields(BaseModel):
    """Every settable field; only those present in the body are applied."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    tier: Text | None = Field(
        None,
        description="A tier of the configuration; its values are "
        "the defaults of the fields not given.",
    )
    spend_cap_cents: Cents | None = Field(None, description="Cap per budget period; null: none.")
    budget_period: BudgetPeriod | None = None
    rate_limit_rpm: Rate | None = None
    rate_limit_rpd: Rate | None = None
    rate_limit_tpm: Rate | None = None
    allowed_models: Annotated[list[Text], Field(max_length=256)] | None = Field(
        None, description="Exact `provider/model` names or shell-style globs."
    )
    default_tag: Text | None = None
    metadata: Metadata | None = Field(
        None, description="Free JSON object (at most 50 keys, 16 KiB); PATCH replaces it whole."
    )
    byok: StrictBool | None = None
    expires_at: Moment | None = None

    @field_validator(*_NOT_NULL, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("not_null", "must not be null")
        return value

    def given(self) -> dict[str, Any]:
        """The fields present in the request, explicit nulls included."""
        return {field: getattr(self, field) for field in self.model_fields_set}


class SubAccountCreate(SubAccountFields):
    name: Text  # type: ignore[assignment]


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: Annotated[StrictInt, Field(ge=0, le=MAX_GRACE_SECONDS)] = 0


class Spend(BaseModel):
    period_start: str
    resets_at: str | None
    spent_cents: float = Field(
        description="Cost + fee settled in this period, in cents: a JSON number with up to "
        "six decimals, exact."
    )
    remaining_cents: float | None = Field(
        description="spend_cap_cents minus spent_cents, never negative; null without a cap."
    )


class SubAccountObject(BaseModel):
    id: str
    object: Literal["sub_account"]
    name: str
    tier: str | None
    spend_cap_cents: int | None
    budget_period: str
    rate_limit_rpm: int | None
    rate_limit_rpd: int | None
    rate_limit_tpm: int | None
    allowed_models: list[str]
    default_tag: str | None
    metadata: dict[str, Any]
    byok: bool
    status: str
    expires_at: str | None
    created_at: str
    spend: Spend


class SubAccountWithKey(SubAccountObject):
    key: str = Field(description="The plaintext key, shown only in this answer.")


class SubAccountList(BaseModel):
    object: Literal["list"]
    data: list[SubAccountObject]
    has_more: bool


class Account(BaseModel):
    id: str
    object: Literal["account"]
    name: str
    created_at: str


class Tier(BaseModel):
    object: Literal["tier"]
    name: str
    spend_cap_cents: int | None
    budget_period: str
    rate_limit_rpm: int | None
    rate_limit_rpd: int | None
    rate_limit_tpm: int | None
    allowed_models: list[str]
    byok: bool


class TierList(BaseModel):
    object: Literal["list"]
    data: list[Tier]
    has_more: bool
