"""Key policies by key hash: an `InvalidatedCache` in front of Redis.

The control plane writes `aigw:key:<hash>` and then publishes the changed hashes (or `*`) on
`aigw:invalidate` (docs/internals.md).

Every Redis failure here is fail-closed: it becomes 503 `gateway_unavailable`, as does a key that
is not found before the control plane has projected the policies (`aigw:projected` absent).
"""

from __future__ import annotations

import logging

import orjson

from aigw import keyspace
from aigw.errors import gateway_unavailable
from aigw.policy import KeyPolicy
from aigw.redis_client import REDIS_ERRORS
from extproc.invalidated_cache import REDIS_TIMEOUT, InvalidatedCache

log = logging.getLogger(__name__)

__all__ = ["REDIS_TIMEOUT", "SUBSCRIBER_NAME", "PolicyStore"]

SUBSCRIBER_NAME = "aigw-extproc-invalidations"
"""The Redis client name of the subscription (`CLIENT LIST`)."""


class PolicyStore(InvalidatedCache[KeyPolicy]):
    """`lookup(key_hash)` → the key's `KeyPolicy`, or None for an unknown key."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(redis_url, SUBSCRIBER_NAME, "policy")

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        return await self.get(key_hash)

    async def _read(self, key_hash: str) -> KeyPolicy | None:
        try:
            raw = await self._redis.get(keyspace.key_policy(key_hash))
            if raw is None:
                if not await self._redis.exists(keyspace.PROJECTED_MARKER):
                    raise gateway_unavailable(
                        "The gateway is still loading its keys; retry in a moment."
                    )
                return None
        except REDIS_ERRORS as exc:
            raise gateway_unavailable() from exc
        try:
            return KeyPolicy.from_json(raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            log.error("unreadable key policy in Redis: %s", exc)
            raise gateway_unavailable() from exc

    def _invalidate(self, message: bytes) -> None:
        """Drop the comma-separated key hashes of one invalidation message, or all for `*`."""
        if message == b"*":
            self._forget(None)
            return
        for key_hash in message.decode("ascii", "replace").split(","):
            self._forget(key_hash.strip())
