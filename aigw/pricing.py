"""The price of a model: the maintained `genai-prices` table, overridden and extended by the
configuration's `pricing:` section (USD per million tokens), compiled to integer nano-cents per
token for the hot path (see `aigw.money`).

Long-context tiers follow genai-prices' "cliff" rule: once a request's input crosses a tier's
threshold, every token of it is priced at that tier. `worst` is the highest price of each token
class over all tiers, for reserving a request's worst-case cost before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from aigw.config import GatewayConfig, PriceConfig
from aigw.money import nanocents_per_token, nanocents_to_microcents


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Nano-cents per token of each class."""

    input: int
    cached_input: int
    cache_write: int
    output: int

    def cost_nanocents(self, input: int, cached_input: int, cache_write: int, output: int) -> int:
        return (
            input * self.input
            + cached_input * self.cached_input
            + cache_write * self.cache_write
            + output * self.output
        )


@dataclass(frozen=True, slots=True)
class ModelPricing:
    base: TokenPrices
    tiers: tuple[tuple[int, TokenPrices], ...] = ()
    max_output_tokens: int | None = None
    context_window: int | None = None
    worst: TokenPrices = field(init=False, repr=False, compare=False)
    """The highest price of each token class over every tier, computed once."""

    def __post_init__(self) -> None:
        every = [self.base, *(prices for _, prices in self.tiers)]
        worst = TokenPrices(
            max(p.input for p in every),
            max(p.cached_input for p in every),
            max(p.cache_write for p in every),
            max(p.output for p in every),
        )
        object.__setattr__(self, "worst", worst)

    def prices_for(self, total_input_tokens: int) -> TokenPrices:
        chosen = self.base
        for start, prices in self.tiers:
            if total_input_tokens > start:
                chosen = prices
        return chosen

    def cost_microcents(
        self, input: int, cached_input: int = 0, cache_write: int = 0, output: int = 0
    ) -> int:
        """What these tokens cost, rounded up to a whole micro-cent."""
        prices = self.prices_for(input + cached_input + cache_write)
        return nanocents_to_microcents(
            prices.cost_nanocents(input, cached_input, cache_write, output)
        )


class PriceTable:
    """Prices by `(provider, upstream model)`; `None` means unpriced (never free by accident)."""

    def __init__(self, config: GatewayConfig) -> None:
        self._overrides = {
            tuple(name.split("/", 1)): _from_config(price) for name, price in config.pricing.items()
        }
        self._lookup = lru_cache(maxsize=4096)(self._lookup_uncached)

    def lookup(self, provider: str, model: str) -> ModelPricing | None:
        return self._lookup(provider, model)

    def _lookup_uncached(self, provider: str, model: str) -> ModelPricing | None:
        override = self._overrides.get((provider, model))
        if override is not None:
            return override
        return _from_genai_prices(provider, model)


def _from_config(price: PriceConfig) -> ModelPricing:
    cached = price.cached_input if price.cached_input is not None else price.input
    return ModelPricing(
        TokenPrices(
            nanocents_per_token(price.input),
            nanocents_per_token(cached),
            nanocents_per_token(price.input),
            nanocents_per_token(price.output),
        ),
        max_output_tokens=price.max_output_tokens,
    )


def _from_genai_prices(provider: str, model: str) -> ModelPricing | None:
    from genai_prices import data_snapshot

    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    prices = info.get_prices(datetime.now(UTC))
    fields = {
        "input": getattr(prices, "input_mtok", None),
        "cached_input": getattr(prices, "cache_read_mtok", None),
        "cache_write": getattr(prices, "cache_write_mtok", None),
        "output": getattr(prices, "output_mtok", None),
    }
    if fields["input"] is None and fields["output"] is None:
        return None
    for missing in ("cached_input", "cache_write"):
        if fields[missing] is None:
            fields[missing] = fields["input"]
    thresholds = sorted({tier.start for value in fields.values() for tier in _tiers(value)})
    return ModelPricing(
        _token_prices(fields, threshold=None),
        tuple((start, _token_prices(fields, threshold=start)) for start in thresholds),
        context_window=info.context_window,
    )


def _tiers(value: Any) -> list[Any]:
    return list(getattr(value, "tiers", None) or ())


def _price_at(value: Any, threshold: int | None) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    price: Decimal = value.base
    for tier in _tiers(value):
        if threshold is not None and tier.start <= threshold:
            price = tier.price
    return price


def _token_prices(fields: dict[str, Any], threshold: int | None) -> TokenPrices:
    return TokenPrices(
        *(
            nanocents_per_token(_price_at(fields[name], threshold))
            for name in ("input", "cached_input", "cache_write", "output")
        )
    )
