"""Cost arithmetic: the genai-prices table, config overrides, cached tokens, tiers, the fee,
and the settle charge of a request — all in integer micro-cents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from aigw.config import parse_config
from aigw.money import fee_microcents, microcents_to_cents, nanocents_per_token
from aigw.periods import current_period
from aigw.pricing import ModelPricing, PriceTable, TokenPrices
from extproc.admission import Ticket
from extproc.metering import Usage
from extproc.settlement import Outcome, RequestFacts, billed_tokens, settle_request

CONFIG = parse_config(
    """
providers:
  openai: {base_url: "https://api.openai.com/v1", api_key: k}
  anthropic: {base_url: "https://api.anthropic.com/v1", auth: x-api-key, api_key: k}
  google: {base_url: "https://generativelanguage.googleapis.com/v1beta/openai", api_key: k}
  local: {base_url: "http://127.0.0.1:9/v1", api_key: k}
pricing:
  openai/gpt-5.4-mini: {input: 0.25, cached_input: 0.025, output: 2.0}
  local/llama: {input: 0.1, output: 0.3, max_output_tokens: 2048}
"""
)


def test_override_prices_every_token_class() -> None:
    price = PriceTable(CONFIG).lookup("openai", "gpt-5.4-mini")
    assert price is not None
    # 1,000 input at $0.25/M = 0.025 cent; 1,000 cached at $0.025/M; 1,000 output at $2/M
    assert price.cost_microcents(1000) == 25_000
    assert price.cost_microcents(0, cached_input=1000) == 2_500
    assert price.cost_microcents(0, output=1000) == 200_000
    assert price.cost_microcents(1000, 1000, 0, 1000) == 227_500


def test_override_without_cached_price_charges_input_rate() -> None:
    price = PriceTable(CONFIG).lookup("local", "llama")
    assert price is not None
    assert price.cost_microcents(0, cached_input=1000) == price.cost_microcents(1000)
    assert price.max_output_tokens == 2048


def test_the_table_prices_anthropic_cache_writes_above_input() -> None:
    price = PriceTable(CONFIG).lookup("anthropic", "claude-haiku-4.5")
    assert price is not None
    assert price.base.cache_write > price.base.input > price.base.cached_input
    assert price.worst.cache_write == price.base.cache_write


def test_unknown_models_have_no_price() -> None:
    table = PriceTable(CONFIG)
    assert table.lookup("openai", "no-such-model") is None
    assert table.lookup("local", "unpriced") is None


def test_long_context_tier_applies_to_every_token() -> None:
    base = TokenPrices(100, 10, 125, 1000)
    long = TokenPrices(200, 20, 250, 1500)
    price = ModelPricing(base, ((200_000, long),))
    assert price.worst == long
    assert price.cost_microcents(200_000) == 200_000 * 100 // 1000
    assert price.cost_microcents(200_001) == -(-200_001 * 200 // 1000)


def test_fee_and_rounding_are_integers_rounded_up() -> None:
    assert nanocents_per_token(Decimal("0.025")) == 2500
    assert nanocents_per_token(Decimal("0.0000001")) == 1
    assert fee_microcents(312_500, Decimal(5)) == 15_625
    assert fee_microcents(1, Decimal(5)) == 1
    assert fee_microcents(312_500, Decimal(0)) == 0
    assert microcents_to_cents(328_125) == Decimal("0.328125")
    assert microcents_to_cents(50_000_000) == Decimal(50)


def ticket(fee_percent: Decimal) -> Ticket:
    price = PriceTable(CONFIG).lookup("openai", "gpt-5.4-mini")
    assert price is not None
    period = current_period("monthly", datetime(2026, 1, 1, tzinfo=UTC), datetime.now(UTC))
    return Ticket("sa_1", period, 10**9, price, fee_percent, 500, 100, 10**6, None, 0)


FACTS = RequestFacts("req", "acct", "sa_1", (), "openai/gpt-5.4-mini", "openai", "/v1/x", True,
                     False)  # fmt: skip


def test_settle_charges_cost_plus_fee_and_byok_no_fee() -> None:
    used = Usage(input_tokens=1000, cached_input_tokens=1000, output_tokens=1000, reported=True)
    outcome = Outcome(200, used, False, 10)

    with_fee = settle_request(ticket(Decimal(5)), FACTS, outcome)
    without = settle_request(ticket(Decimal(0)), FACTS, outcome)

    assert with_fee.cost_microcents == 227_500 + 11_375
    assert without.cost_microcents == 227_500


def test_errors_cost_nothing_and_cut_off_streams_their_worst_case() -> None:
    t = ticket(Decimal(0))
    assert billed_tokens(t, Outcome(500, Usage(input_tokens=9, reported=True), False, 1)) == Usage()
    cut = billed_tokens(t, Outcome(200, Usage(), True, 1))
    assert (cut.input_tokens, cut.output_tokens) == (500, 100)
    reported = billed_tokens(t, Outcome(200, Usage(input_tokens=7, reported=True), True, 1))
    assert (reported.input_tokens, reported.output_tokens) == (7, 100)
