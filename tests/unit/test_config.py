"""Configuration checking: every failure mode stops loading with a message that names the file
and the key; the shipped default loads; `${ENV}` expansion."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from aigw.config import ConfigError, GatewayConfig, expand_env, load_config, parse_config

CASES = Path(__file__).parent / "config_cases"
REPO = Path(__file__).parents[2]

EXPECTED_KEY = {
    "misspelled_server_key.yaml": ("server.prot", "unknown key"),
    "misspelled_tier_key.yaml": ("tiers.free.spend_cap_cent", "unknown key"),
    "negative_cap.yaml": ("tiers.free.spend_cap_cents", "greater than or equal to 0"),
    "unknown_budget_period.yaml": ("tiers.free.budget_period", "'monthly'"),
    "provider_bad_scheme.yaml": ("providers.openai.base_url", "http:// or https://"),
    "provider_bad_auth.yaml": ("providers.openai.auth", "'bearer'"),
    "provider_missing_base_url.yaml": ("providers.openai.base_url", "required"),
    "pricing_without_provider.yaml": ("pricing", "provider/model"),
    "pricing_negative.yaml": ("pricing.openai/gpt-5.4-mini.input", "greater than or equal"),
    "port_out_of_range.yaml": ("server.port", "less than or equal to 65535"),
    "fee_over_100.yaml": ("fee_percent", "less than or equal to 100"),
    "providers_not_a_mapping.yaml": ("providers", "dictionary"),
    "not_yaml.yaml": ("not valid YAML", ""),
    "top_level_list.yaml": ("top level must be a mapping", ""),
    "bad_provider_name.yaml": ("providers", "not a valid name"),
}


def test_every_case_file_has_an_expectation() -> None:
    assert sorted(path.name for path in CASES.glob("*.yaml")) == sorted(EXPECTED_KEY)


@pytest.mark.parametrize("case", sorted(EXPECTED_KEY))
def test_bad_config_names_file_and_key(case: str) -> None:
    path = CASES / case
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    key, detail = EXPECTED_KEY[case]
    assert message.startswith(f"{path}:")
    assert key in message
    assert detail in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_default_loads_with_three_providers_and_tiers() -> None:
    config = load_config(REPO / "config" / "gateway.yaml")
    assert set(config.providers) == {"openai", "anthropic", "google"}
    assert config.providers["anthropic"].auth == "x-api-key"
    assert config.providers["google"].base_path == "/v1beta/openai"
    assert {"free", "pro"} <= set(config.tiers)
    assert config.pricing["openai/gpt-5.4-mini"].output == Decimal("2.0")


def test_env_expansion_with_default_and_blank_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_TEST_KEY", "sk-test-123")
    monkeypatch.delenv("AIGW_TEST_UNSET", raising=False)
    text = """
redis_url: ${AIGW_TEST_UNSET}
data_dir: ${AIGW_TEST_UNSET:-/tmp/aigw-data}
providers:
  openai: {base_url: "https://api.openai.com/v1/", api_key: "${AIGW_TEST_KEY}"}
"""
    config = parse_config(text)
    assert config.redis_url is None
    assert config.data_dir == "/tmp/aigw-data"
    assert config.providers["openai"].api_key == "sk-test-123"
    assert config.providers["openai"].base_url == "https://api.openai.com/v1"


def test_expand_env_leaves_other_text_alone() -> None:
    assert expand_env("a ${X} $Y ${Z:-z}", {"X": "1"}) == "a 1 $Y z"


def test_prices_are_decimal_never_float() -> None:
    config = parse_config("pricing:\n  openai/m: {input: 0.1, output: 0.3}\n")
    price = config.pricing["openai/m"]
    assert isinstance(price.input, Decimal)
    assert price.input + price.output == Decimal("0.4")


def test_runtime_json_round_trip() -> None:
    config = load_config(REPO / "config" / "gateway.yaml")
    assert GatewayConfig.model_validate_json(config.model_dump_json()) == config


def test_http_provider_for_a_local_server() -> None:
    config = parse_config("providers:\n  local: {base_url: 'http://127.0.0.1:11434/v1'}\n")
    provider = config.providers["local"]
    assert (provider.scheme, provider.hostname, provider.port) == ("http", "127.0.0.1", 11434)
