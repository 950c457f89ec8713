"""The model catalogue: which `provider/model` names a gateway knows and where a requested model
name goes (API.md §3). Shared by extproc (routing, GET /v1/models) and the control plane.

A model is known when, for a configured provider, it is
- a `pricing` key of the configuration (`provider/model`),
- in the provider's `models:` list, or
- in the genai-prices table under the provider's id, and owned by it: genai-prices also lists
  some providers' copies of other providers' models (Google's Vertex copies of Anthropic's Claude,
  declared by `fallback_model_providers`); those belong to the origin provider.

`provider/model` goes to `provider` when it is configured. A bare name goes to the one provider
that knows it by exact name, else to the one whose genai-prices match rules take it (dated
snapshots such as `gpt-4o-2024-08-06`); several candidates or none answer 404 `model_not_found`.
Everything is computed once per configuration: every known name resolves by one dict lookup.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from genai_prices import data_snapshot
from genai_prices.types import Provider as PriceTableProvider

from aigw.config import GatewayConfig
from aigw.errors import GatewayError, model_not_found

_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """Where a requested model goes: the provider, its own model name, and `provider/model`."""

    provider: str
    upstream_model: str
    canonical: str


class ModelCatalog:
    """The models of one configuration; `resolve` maps a requested name to a `ModelRoute`."""

    def __init__(self, config: GatewayConfig) -> None:
        configured = set(config.providers)
        self._providers = configured
        self._provider_list = ", ".join(sorted(configured))
        price_table = {p.id: p for p in data_snapshot.get_snapshot().providers}
        self._matchers: list[tuple[str, PriceTableProvider, frozenset[str]]] = []

        names: dict[str, set[str]] = {provider: set() for provider in configured}
        for priced in config.pricing:
            provider, _, model = priced.partition("/")
            if provider in configured:
                names[provider].add(model)
        for provider, settings in config.providers.items():
            names[provider].update(settings.models)
            table = price_table.get(provider)
            if table is not None:
                owned = _owned_models(table, price_table)
                self._matchers.append((provider, table, owned))
                names[provider].update(model for model in owned if not _is_template(model))

        self.models: tuple[str, ...] = tuple(
            sorted(f"{provider}/{model}" for provider, models in names.items() for model in models)
        )
        self._listed = frozenset(self.models)

        providers_of: dict[str, list[str]] = defaultdict(list)
        for provider in sorted(names):
            for model in names[provider]:
                providers_of[model].append(provider)
        self._exact = {model: tuple(providers) for model, providers in providers_of.items()}
        self._routes: dict[str, ModelRoute] = {}
        for model, providers in self._exact.items():
            if len(providers) == 1 and not self._is_prefixed(model):
                self._routes[model] = ModelRoute(providers[0], model, f"{providers[0]}/{model}")
        for canonical in self.models:
            provider, _, model = canonical.partition("/")
            self._routes[canonical] = ModelRoute(provider, model, canonical)
        self._matched: dict[str, tuple[str, ...]] = {}

    def __contains__(self, canonical: object) -> bool:
        """Whether `provider/model` is one of the known (listed) models."""
        return canonical in self._listed

    def resolve(self, requested: str) -> ModelRoute:
        """The route of a requested name; GatewayError 404 `model_not_found` when there is none."""
        route = self._routes.get(requested)
        if route is not None:
            return route
        provider, slash, model = requested.partition("/")
        if slash and provider in self._providers:
            if not model:
                raise model_not_found(requested)
            return ModelRoute(provider, model, requested)
        candidates = self._exact.get(requested) or (() if slash else self._matching(requested))
        if len(candidates) == 1:
            return ModelRoute(candidates[0], requested, f"{candidates[0]}/{requested}")
        raise self._not_found(requested, candidates, provider if slash else None)

    def _is_prefixed(self, model: str) -> bool:
        """A name such as `openai/gpt-oss-120b` (a Groq model id) starts with a provider's name:
        as a request it means that provider, so it is no bare name of another."""
        provider, slash, _ = model.partition("/")
        return bool(slash) and provider in self._providers

    def _matching(self, requested: str) -> tuple[str, ...]:
        """Providers whose genai-prices match rules take a bare name (memoised, bounded)."""
        found = self._matched.get(requested)
        if found is None:
            found = tuple(
                provider
                for provider, table, owned in self._matchers
                if (match := table.find_model(requested)) is not None and match.id in owned
            )
            if len(self._matched) >= _MEMO_LIMIT:
                self._matched.clear()
            self._matched[requested] = found
        return found

    def _not_found(
        self, requested: str, candidates: tuple[str, ...], provider: str | None
    ) -> GatewayError:
        if candidates:
            names = ", ".join(f"'{candidate}/{requested}'" for candidate in candidates)
            message = (
                f"The model '{requested}' is offered by several providers; name one of {names}."
            )
        elif provider is not None:
            message = (
                f"The model '{requested}' names the provider '{provider}', which is not configured "
                f"on this gateway (providers: {self._provider_list})."
            )
        else:
            message = (
                f"The model '{requested}' is not known to this gateway; name it as provider/model "
                f"(providers: {self._provider_list})."
            )
        return model_not_found(requested, message)


def list_models(config: GatewayConfig) -> list[str]:
    """Every known `provider/model` of a configuration, sorted."""
    return list(ModelCatalog(config).models)


def _owned_models(
    provider: PriceTableProvider, price_table: dict[str, PriceTableProvider]
) -> frozenset[str]:
    """The provider's genai-prices model ids, without its copies of its fallback providers'."""
    origins = [
        price_table[origin]
        for origin in provider.fallback_model_providers or ()
        if origin in price_table
    ]
    return frozenset(
        model.id
        for model in provider.models
        if not any(origin.find_model(model.id) is not None for origin in origins)
    )


def _is_template(model_id: str) -> bool:
    """genai-prices ids such as `ft:gpt-3.5-turbo-` or `gpt-4o:extended` are match prefixes or
    price variants, not names a provider answers to."""
    return ":" in model_id or model_id.endswith(("-", "."))
