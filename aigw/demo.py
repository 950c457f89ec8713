"""`aigw up --demo`: every provider routed to the built-in mock provider.

Each configured provider keeps its base path (`/v1beta/openai` stays `/v1beta/openai`) and its
auth style, so the gateway's rewrites are exercised as with the real upstream. Every platform
key becomes the obviously fake `demo-key`: a real key set in the environment never reaches the
mock, which records request headers. The three well-known providers are added when the
configuration lacks them, so a demo always has OpenAI, Anthropic and Google models to try.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aigw.config import GatewayConfig, ProviderConfig

DEMO_KEY = "demo-key"
WELL_KNOWN_PROVIDERS = {
    "openai": ProviderConfig(base_url="https://api.openai.com/v1", auth="bearer"),
    "anthropic": ProviderConfig(base_url="https://api.anthropic.com/v1", auth="x-api-key"),
    "google": ProviderConfig(
        base_url="https://generativelanguage.googleapis.com/v1beta/openai", auth="bearer"
    ),
}


def with_mock_providers(config: GatewayConfig, mock_base_url: str) -> GatewayConfig:
    """`config` with every provider's base URL on `mock_base_url`, keeping its base path."""
    mock = mock_base_url.rstrip("/")
    if urlsplit(mock).path:
        raise ValueError(f"the mock provider's URL must have no path: {mock_base_url!r}")
    providers = {**WELL_KNOWN_PROVIDERS, **config.providers}
    pointed = {
        name: provider.model_copy(
            update={
                "base_url": mock + provider.base_path,
                "api_key": DEMO_KEY,
                "ca_file": None,
            }
        )
        for name, provider in providers.items()
    }
    return config.model_copy(update={"providers": pointed})
