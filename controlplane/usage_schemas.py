"""Response shapes of the usage and billing endpoints (API.md §6 "Usage and billing"), declared
for the OpenAPI document; the routes answer with `ExactJSONResponse` so cents stay exact."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Cents = Annotated[float, Field(description="Cents: a JSON number with up to six decimals, exact.")]


class UsageRow(BaseModel):
    day: str | None = Field(None, description="UTC day `YYYY-MM-DD`; only with group_by=day.")
    sub_account_id: str | None = Field(
        None, description="Only with group_by=sub_account_id; null for the parent's own traffic."
    )
    tag: str | None = Field(
        None, description="Only with group_by=tag; null for requests without tags."
    )
    model: str | None = Field(None, description="Only with group_by=model.")
    requests: int
    input_tokens: int
    output_tokens: int
    cost_cents: Cents
    fee_cents: Cents
    total_cents: Cents


class UsageList(BaseModel):
    object: Literal["list"]
    data: list[UsageRow]
    has_more: bool


class RequestObject(BaseModel):
    id: str = Field(description="The request id (`x-aig-request-id`).")
    object: Literal["request"]
    sub_account_id: str | None
    tags: list[str]
    model: str
    provider: str
    endpoint: str
    status: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_cents: Cents
    fee_cents: Cents
    total_cents: Cents
    latency_ms: int | None
    byok: bool
    stream: bool
    aborted: bool
    started_at: str | None
    finished_at: str


class RequestList(BaseModel):
    object: Literal["list"]
    data: list[RequestObject]
    has_more: bool


class Share(BaseModel):
    requests: int
    cost_cents: Cents
    fee_cents: Cents
    total_cents: Cents


class Totals(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    cost_cents: Cents
    fee_cents: Cents
    total_cents: Cents
    byok: Share = Field(description="Requests on the parent's own provider keys: no fee.")
    non_byok: Share


class StatementLine(Totals):
    sub_account_id: str | None = Field(description="null: the parent's own traffic.")
    name: str | None
    default_tag: str | None


class BillingStatement(Totals):
    object: Literal["billing_statement"]
    month: str
    period_start: str
    period_end: str
    sub_accounts: list[StatementLine]
