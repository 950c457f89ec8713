"""Money as integers: the gateway counts in micro-cents (1e-6 cent), the unit of every amount in
Redis and PostgreSQL; JSON shows cents with up to six decimals (API.md §5).

Per-token prices are kept in nano-cents (1e-9 cent) so that the hot path multiplies and adds
integers only: a price of P USD per million tokens is P * 100,000 nano-cents per token. A price
with finer precision than that is rounded up, so a cost is never under-counted. A request's cost
is rounded up to the next micro-cent, once, after its token classes are added.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

MICROCENTS_PER_CENT = 1_000_000
NANOCENTS_PER_MICROCENT = 1_000
_NANOCENTS_PER_TOKEN_PER_USD_PER_MTOK = Decimal(100_000)


def nanocents_per_token(usd_per_million_tokens: Decimal) -> int:
    """A price in USD per million tokens as whole nano-cents per token, rounded up."""
    value = usd_per_million_tokens * _NANOCENTS_PER_TOKEN_PER_USD_PER_MTOK
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def nanocents_to_microcents(nanocents: int) -> int:
    """Round up to the next whole micro-cent."""
    return -(-nanocents // NANOCENTS_PER_MICROCENT)


def fee_microcents(cost_microcents: int, fee_percent: Decimal) -> int:
    """The platform fee on a cost, rounded up to the next micro-cent."""
    if not fee_percent or not cost_microcents:
        return 0
    fee = Decimal(cost_microcents) * fee_percent / 100
    return int(fee.to_integral_value(rounding=ROUND_CEILING))


def microcents_to_cents(microcents: int) -> Decimal:
    """For JSON: cents with up to six decimal places, exact."""
    value = Decimal(microcents).scaleb(-6)
    integral = value.to_integral_value()
    return integral if value == integral else value.normalize()


def cents_to_microcents(cents: int) -> int:
    return cents * MICROCENTS_PER_CENT
