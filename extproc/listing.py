"""GET /v1/models and GET /v1/models/{model}: the catalogue's models a key may use, in OpenAI's
list format. Answer bodies depend only on the allow-list, so they are built once per list."""

from __future__ import annotations

from typing import Any

import orjson

from aigw.catalog import ModelCatalog
from aigw.errors import model_not_found
from aigw.policy import KeyPolicy

_MEMO_LIMIT = 1024


class ModelListing:
    def __init__(self, catalog: ModelCatalog) -> None:
        self._catalog = catalog
        self._lists: dict[tuple[str, ...], bytes] = {}

    def list_body(self, policy: KeyPolicy) -> bytes:
        body = self._lists.get(policy.allowed_models)
        if body is None:
            allowed = [_model_object(m) for m in self._catalog.models if policy.allows(m)]
            body = orjson.dumps({"object": "list", "data": allowed})
            if len(self._lists) >= _MEMO_LIMIT:
                self._lists.clear()
            self._lists[policy.allowed_models] = body
        return body

    def model_body(self, policy: KeyPolicy, model: str) -> bytes:
        """One model object; 404 `model_not_found` unless it is listed and the key may use it."""
        canonical = self._catalog.resolve(model).canonical
        if canonical not in self._catalog or not policy.allows(canonical):
            raise model_not_found(model)
        return orjson.dumps(_model_object(canonical))


def _model_object(canonical: str) -> dict[str, Any]:
    provider = canonical.partition("/")[0]
    return {"id": canonical, "object": "model", "created": 0, "owned_by": provider}
