"""Admission: the one decision per request, taken after the model is known and before the
request goes upstream, that will hold the spend cap and the rate limits (one Lua round trip).

`Admission` is the seam the processor calls; `AdmitAll` is what runs while neither spend caps
nor rate limits exist: it admits every request and changes nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

from aigw.catalog import ModelRoute
from aigw.policy import KeyPolicy


class Admission(Protocol):
    async def admit(self, policy: KeyPolicy, route: ModelRoute, body: dict[str, Any]) -> None:
        """Refuse by raising `GatewayError` (402, 429, 503); may lower `max_tokens` in `body`."""


class AdmitAll:
    """Admits every request: no spend cap or rate limit is enforced yet."""

    async def admit(self, policy: KeyPolicy, route: ModelRoute, body: dict[str, Any]) -> None:
        return None
