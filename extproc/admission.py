"""Admission: the one decision per request, taken once the model is known and before it goes
upstream — rate limits and the spend cap in one Lua round trip (`extproc.limits`).

The worst case is reserved (input bound + output limit at the model's highest prices, plus the
fee unless BYOK); when only part fits, the output limit is lowered to what the remainder pays for
and written into the body; under a cap the limit is always sent upstream, so no answer can
outgrow its reservation. A request of an owner with neither cap nor limits costs no round trip
here. The `Ticket` carries what the response phases need to meter and settle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aigw.catalog import ModelRoute
from aigw.envoy_config import ROUTE_TIMEOUT_S
from aigw.errors import GatewayError, gateway_unavailable, model_not_found
from aigw.money import microcents_to_cents
from aigw.periods import Period, current_period
from aigw.policy import KeyPolicy
from aigw.pricing import ModelPricing, PriceTable
from extproc.endpoints import Endpoint
from extproc.limits import AdmitRequest, AdmitResult, LimitStore, LimitStoreUnavailable
from extproc.request_bounds import (
    MIN_USEFUL_OUTPUT_TOKENS,
    input_token_bound,
    output_field,
    requested_output_tokens,
)

RESERVATION_TTL_MS = (ROUTE_TIMEOUT_S + 60) * 1000
_ROUNDING_SLACK_MICROCENTS = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEVER_MS = 2**63


@dataclass(slots=True)
class Ticket:
    """One admitted request: what was reserved, and how to price what it really used."""

    owner_id: str
    period: Period
    cap_microcents: int | None
    pricing: ModelPricing
    fee_percent: Decimal
    input_bound: int
    output_tokens: int
    reserved_microcents: int
    tpm: int | None
    started_ms: int
    clamped: bool = False
    rate_headers: dict[str, str] = field(default_factory=dict)


class Admission:
    def __init__(
        self, store: LimitStore, prices: PriceTable, fee_percent: Decimal, now_ms: Any
    ) -> None:
        self._store = store
        self._prices = prices
        self._fee_percent = fee_percent
        self._now_ms = now_ms
        self._periods: dict[str, tuple[int, int, Period]] = {}

    async def admit(
        self,
        policy: KeyPolicy,
        route: ModelRoute,
        endpoint: Endpoint,
        raw_body: bytes,
        body: dict[str, Any],
        request_id: str,
        byok: bool = False,
    ) -> tuple[Ticket, bool]:
        """Admit or raise `GatewayError` (402, 404, 429, 503). Returns the ticket and whether
        `body` was changed (the output limit written or lowered)."""
        pricing = self._prices.lookup(route.provider, route.upstream_model)
        if pricing is None:
            raise model_not_found(
                route.canonical,
                f"The model '{route.canonical}' has no price on this gateway, "
                "so it cannot be metered; the operator can add one under `pricing:`.",
            )
        now_ms = self._now_ms()
        fee_percent = Decimal(0) if byok else self._fee_percent
        input_bound = input_token_bound(raw_body)
        wanted, present = requested_output_tokens(endpoint, body, pricing.max_output_tokens)
        period = self._period(policy.budget_period, now_ms)
        worst = pricing.worst
        per_input = max(worst.input, worst.cache_write, worst.cached_input)
        ticket = Ticket(
            owner_id=policy.owner_id,
            period=period,
            cap_microcents=_cap(policy),
            pricing=pricing,
            fee_percent=fee_percent,
            input_bound=input_bound,
            output_tokens=wanted,
            reserved_microcents=0,
            tpm=policy.rate_limit_tpm,
            started_ms=now_ms,
        )
        limited = (
            ticket.cap_microcents is not None
            or policy.rate_limit_rpm is not None
            or policy.rate_limit_rpd is not None
            or policy.rate_limit_tpm is not None
        )
        if limited:
            result = await self._admit(
                AdmitRequest(
                    owner_id=policy.owner_id,
                    parent_id=policy.parent_id,
                    request_id=request_id,
                    now_ms=now_ms,
                    period_id=period.id,
                    period_end_ms=period.end_ms,
                    cap_microcents=ticket.cap_microcents,
                    input_microcents=_with_fee_microcents(input_bound * per_input, fee_percent)
                    + _ROUNDING_SLACK_MICROCENTS,
                    output_nanocents_per_token=_with_fee_nanocents(worst.output, fee_percent),
                    max_output_tokens=wanted,
                    min_output_tokens=min(MIN_USEFUL_OUTPUT_TOKENS, wanted),
                    reservation_ttl_ms=RESERVATION_TTL_MS,
                    rpm=policy.rate_limit_rpm,
                    rpd=policy.rate_limit_rpd,
                    tpm=policy.rate_limit_tpm,
                    tpm_input_tokens=input_bound,
                    require_ready=ticket.cap_microcents is not None,
                ),
                policy,
                period,
            )
            ticket.reserved_microcents = result.reserved_microcents
            ticket.rate_headers = _rate_headers(result)
            if result.clamped:
                ticket.output_tokens = result.granted_output_tokens
                ticket.clamped = True
        if ticket.cap_microcents is None:
            return ticket, False
        target = output_field(endpoint, route.provider, present)
        if target is None or body.get(target) == ticket.output_tokens:
            return ticket, False
        body[target] = ticket.output_tokens
        return ticket, True

    def _period(self, budget_period: str, now_ms: int) -> Period:
        """The current period of a kind, computed once per period rather than per request."""
        known = self._periods.get(budget_period)
        if known is not None and known[0] <= now_ms < known[1]:
            return known[2]
        period = current_period(budget_period, _EPOCH, datetime.fromtimestamp(now_ms / 1000, UTC))
        self._periods[budget_period] = (period.start_ms, period.end_ms or _NEVER_MS, period)
        return period

    async def _admit(self, request: AdmitRequest, policy: KeyPolicy, period: Period) -> AdmitResult:
        try:
            result = await self._store.admit(request)
        except LimitStoreUnavailable:
            raise gateway_unavailable() from None
        if result.admitted:
            return result
        if result.refusal == "budget":
            raise _budget_exhausted(policy, result, period)
        if result.refusal == "not_ready":
            raise gateway_unavailable(
                "The gateway is rebuilding this account's spend after a restart; retry shortly."
            )
        raise _rate_limited(result)


def _cap(policy: KeyPolicy) -> int | None:
    if policy.sub_account_id is None or policy.spend_cap_cents is None:
        return None
    return policy.spend_cap_cents * 1_000_000


def _with_fee_nanocents(nanocents: int, fee_percent: Decimal) -> int:
    return -(-(nanocents * int((100 + fee_percent) * 10_000)) // 1_000_000)


def _with_fee_microcents(nanocents: int, fee_percent: Decimal) -> int:
    return -(-_with_fee_nanocents(nanocents, fee_percent) // 1_000)


def _rate_headers(result: AdmitResult) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, (limit, remaining, reset_s) in result.rate.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = f"{reset_s}s"
    return headers


def _budget_exhausted(policy: KeyPolicy, result: AdmitResult, period: Period) -> GatewayError:
    cap = policy.spend_cap_cents or 0
    return GatewayError(
        402,
        "budget_exhausted",
        "payment_required",
        f"The spend cap of this {policy.budget_period} period ({cap} cents) is reached; "
        "requests resume when the period resets or the cap is raised.",
        sub_account_id=policy.sub_account_id,
        spend_cap_cents=cap,
        spent_cents=microcents_to_cents(result.spent_microcents),
        resets_at=None if period.end is None else period.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _rate_limited(result: AdmitResult) -> GatewayError:
    limit = result.refusal or "rpm"
    names = {"rpm": "requests per minute", "rpd": "requests per day", "tpm": "tokens per minute"}
    headers = {"retry-after": str(result.retry_after_s), **_rate_headers(result)}
    return GatewayError(
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
        f"Rate limit reached for {names.get(limit, limit)}; retry in {result.retry_after_s} s.",
        headers=headers,
        limit=limit,
    )
