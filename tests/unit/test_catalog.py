"""The model catalogue: bare names, `provider/model` routing, listing."""

from __future__ import annotations

import pytest

from aigw.catalog import ModelCatalog, ModelRoute, list_models
from aigw.config import parse_config
from aigw.errors import GatewayError
from aigw.policy import KeyPolicy

CONFIG = parse_config(
    """
providers:
  openai: {base_url: "https://api.openai.com/v1", api_key: "k1"}
  anthropic: {base_url: "https://api.anthropic.com/v1", auth: x-api-key, api_key: "k2"}
  google: {base_url: "https://generativelanguage.googleapis.com/v1beta/openai", api_key: "k3"}
  groq: {base_url: "https://api.groq.com/openai/v1", api_key: "k4"}
  local: {base_url: "http://127.0.0.1:9000/v1", models: [llama-local, shared-model]}
  other: {base_url: "http://127.0.0.1:9001/v1", models: [shared-model]}
pricing:
  openai/gpt-5.4-mini: {input: 0.25, output: 2.0}
  local/priced-only: {input: 1, output: 1}
  ghost/unconfigured: {input: 1, output: 1}
"""
)


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog(CONFIG)


@pytest.mark.parametrize(
    ("requested", "provider"),
    [
        ("gpt-5.4-mini", "openai"),
        ("claude-haiku-4-5", "anthropic"),  # genai-prices lists Google's copy too: not Google's
        ("gemini-2.5-flash", "google"),
        ("gpt-4o-2024-08-06", "openai"),  # a dated snapshot, by genai-prices' match rules
        ("llama-local", "local"),  # a provider's `models:` list
        ("priced-only", "local"),  # a `pricing` key
        ("meta-llama/llama-4-scout-17b-16e-instruct", "groq"),  # a bare id holding a slash
    ],
)
def test_a_bare_name_goes_to_the_one_provider_that_knows_it(
    catalog: ModelCatalog, requested: str, provider: str
) -> None:
    assert catalog.resolve(requested) == ModelRoute(provider, requested, f"{provider}/{requested}")


def test_an_ambiguous_bare_name_is_404_naming_the_candidates(catalog: ModelCatalog) -> None:
    with pytest.raises(GatewayError) as raised:
        catalog.resolve("shared-model")
    error = raised.value
    assert (error.status, error.code) == (404, "model_not_found")
    assert "'local/shared-model'" in error.message
    assert "'other/shared-model'" in error.message
    assert error.body()["error"]["model"] == "shared-model"


@pytest.mark.parametrize("requested", ["no-such-model-anywhere", "", "unconfigured"])
def test_an_unknown_bare_name_is_404(catalog: ModelCatalog, requested: str) -> None:
    with pytest.raises(GatewayError) as raised:
        catalog.resolve(requested)
    assert (raised.value.status, raised.value.code) == (404, "model_not_found")


@pytest.mark.parametrize(
    ("requested", "route"),
    [
        ("openai/gpt-5.4-mini", ModelRoute("openai", "gpt-5.4-mini", "openai/gpt-5.4-mini")),
        ("openai/gpt-next", ModelRoute("openai", "gpt-next", "openai/gpt-next")),
        ("local/llama-local", ModelRoute("local", "llama-local", "local/llama-local")),
        (
            "groq/openai/gpt-oss-120b",
            ModelRoute("groq", "openai/gpt-oss-120b", "groq/openai/gpt-oss-120b"),
        ),
        # Groq's id `openai/gpt-oss-120b` names a configured provider: it means that provider.
        ("openai/gpt-oss-120b", ModelRoute("openai", "gpt-oss-120b", "openai/gpt-oss-120b")),
    ],
)
def test_provider_prefix_routes_and_is_stripped(
    catalog: ModelCatalog, requested: str, route: ModelRoute
) -> None:
    assert catalog.resolve(requested) == route


@pytest.mark.parametrize("requested", ["nosuch/model-1", "ghost/unconfigured", "openai/"])
def test_an_unknown_provider_or_empty_model_is_404(catalog: ModelCatalog, requested: str) -> None:
    with pytest.raises(GatewayError) as raised:
        catalog.resolve(requested)
    assert (raised.value.status, raised.value.code) == (404, "model_not_found")


def test_unknown_provider_message_names_it(catalog: ModelCatalog) -> None:
    with pytest.raises(GatewayError) as raised:
        catalog.resolve("nosuch/model-1")
    assert "'nosuch'" in raised.value.message


def test_list_models_is_sorted_deduplicated_and_only_configured_providers() -> None:
    models = list_models(CONFIG)
    assert models == sorted(set(models))
    for expected in [
        "openai/gpt-5.4-mini",
        "anthropic/claude-haiku-4-5",
        "google/gemini-2.5-flash",
        "local/llama-local",
        "local/priced-only",
        "local/shared-model",
        "other/shared-model",
    ]:
        assert expected in models
    assert not any(model.startswith("ghost/") for model in models)
    assert not any(model.startswith("google/claude") for model in models)
    assert not any(model.endswith("-") for model in models)  # genai-prices' match prefixes


def test_list_models_filtered_by_a_policys_globs(catalog: ModelCatalog) -> None:
    policy = KeyPolicy(
        kind="sub_account",
        parent_id="acct_1",
        sub_account_id="sa_1",
        name="customer",
        allowed_models=("google/gemini-*-flash*", "local/llama-local"),
    )
    allowed = [model for model in catalog.models if policy.allows(model)]
    assert "google/gemini-2.5-flash" in allowed
    assert "local/llama-local" in allowed
    assert "google/gemini-2.5-pro" not in allowed
    assert all(
        model == "local/llama-local" or (model.startswith("google/gemini-") and "flash" in model)
        for model in allowed
    )


def test_known_models_are_in_the_catalogue(catalog: ModelCatalog) -> None:
    assert "openai/gpt-5.4-mini" in catalog
    assert "openai/gpt-next" not in catalog
