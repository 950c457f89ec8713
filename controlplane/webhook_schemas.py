"""Request bodies and response shapes of the webhook routes (API.md §6, Webhooks).

Inputs are strict, so bad input is a 400 naming the field: `url` must be an absolute http(s)
URL of at most 2048 characters with a host and without credentials, whitespace or control
characters; `events` holds known event types or `"*"`.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError

from controlplane.schemas import clean_text
from controlplane.webhook_events import ALL, EVENT_TYPES

MAX_URL_CHARS = 2048
MAX_DESCRIPTION_CHARS = 500


def check_url(value: str) -> str:
    clean_text(value)
    if len(value) > MAX_URL_CHARS:
        raise PydanticCustomError("url_length", f"must be at most {MAX_URL_CHARS} characters")
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise PydanticCustomError("url_chars", "must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise PydanticCustomError("url_invalid", "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise PydanticCustomError("url_scheme", "must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise PydanticCustomError("url_credentials", "must not contain credentials (user:pass@)")
    if not parts.hostname:
        raise PydanticCustomError("url_host", "must name a host")
    if port == 0:
        raise PydanticCustomError("url_invalid", "is not a valid URL")
    return value


def check_event_type(value: str) -> str:
    if value != ALL and value not in EVENT_TYPES:
        known = ", ".join(EVENT_TYPES)
        raise PydanticCustomError(
            "event_type",
            "unknown event type '{value}' (known: {known}, or '*' for all)",
            {"value": value[:100], "known": known},
        )
    return value


def normalise_events(values: list[str]) -> list[str]:
    """Distinct, in their order; `*` alone when present."""
    if ALL in values:
        return [ALL]
    return list(dict.fromkeys(values))


Url = Annotated[StrictStr, Field(min_length=1), AfterValidator(check_url)]
EventType = Annotated[StrictStr, AfterValidator(check_event_type)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(description="Where events are POSTed: http(s), no credentials.")
    events: Annotated[
        list[EventType], Field(min_length=1, max_length=16), AfterValidator(normalise_events)
    ] = Field(description='Event types to receive, or `["*"]` for every type.')
    description: (
        Annotated[StrictStr, Field(max_length=MAX_DESCRIPTION_CHARS), AfterValidator(clean_text)]
        | None
    ) = None


class WebhookObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    events: list[str]
    description: str | None
    created_at: str


class WebhookWithSecret(WebhookObject):
    secret: str = Field(description="`whsec_…`: verifies signatures; shown only in this answer.")


class WebhookList(BaseModel):
    object: Literal["list"]
    data: list[WebhookObject]
    has_more: bool


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint"]
    deleted: Literal[True]


class DeliveryAttempt(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    event_id: str = Field(description="The `webhook-id` header: the same for every attempt.")
    type: str
    attempt: int = Field(description="1 for the first attempt of this event to this endpoint.")
    status_code: int | None = Field(description="The receiver's status; null: no answer.")
    error: str | None
    outcome: Literal["delivered", "retrying", "failed"]
    duration_ms: int
    created_at: str


class DeliveryList(BaseModel):
    object: Literal["list"]
    data: list[DeliveryAttempt]
    has_more: bool


class WebhookTest(BaseModel):
    id: str = Field(description="The test event's id (its `webhook-id`).")
    object: Literal["event"]
    type: Literal["webhook.test"]
    webhook_id: str
