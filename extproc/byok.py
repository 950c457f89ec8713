"""BYOK: the parent's own provider keys, by parent, as ready-made forward replies.

The control plane writes `keyspace.provider_keys(parent_id)` (provider → key sealed with the
master key; `controlplane.provider_key_projector`) and publishes `byok:<parent_id>` (or
`byok:*`) on `aigw:invalidate`. This cache opens each key once with the master key from the
configuration and keeps, per parent, the forward reply carrying that key in the provider's auth
header — or nothing, for the many parents without keys. Like key policies (`extproc.policies`)
it is an `InvalidatedCache`: trusted only while its subscription is connected.

Fail closed: Redis unavailable, the keys not yet projected (`BYOK_PROJECTED_MARKER` absent), or
a key that does not open with the configured master key → 503 `gateway_unavailable`, never a
silent switch to the platform's key. Keys and master key are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from aigw import keyspace
from aigw.config import ProviderConfig
from aigw.errors import gateway_unavailable
from aigw.redis_client import REDIS_ERRORS
from aigw.secrets_box import Keyring, SecretsError, provider_key_context
from extproc.invalidated_cache import InvalidatedCache
from extproc.upstreams import forward_reply

log = logging.getLogger(__name__)

SUBSCRIBER_NAME = "aigw-extproc-byok-invalidations"
_ALL = (b"*", keyspace.BYOK_INVALIDATE_ALL.encode())
_PREFIX = keyspace.byok_invalidation("")

UNREADABLE = "unreadable"
"""In place of a reply: the parent's key for this provider does not open (answered with 503)."""
# provider → the forward reply with the parent's key, or UNREADABLE
ParentKeys = Mapping[str, ProcessingResponse | str]


class ProviderKeyCache(InvalidatedCache[ParentKeys]):
    """`forward(parent_id, provider)` → the reply that sends the request with the parent's own
    key, or None when the parent attached none for that provider."""

    def __init__(
        self, redis_url: str, keyring: Keyring | None, providers: Mapping[str, ProviderConfig]
    ) -> None:
        super().__init__(redis_url, SUBSCRIBER_NAME, "provider key")
        self._keyring = keyring
        self._providers = dict(providers)

    async def forward(self, parent_id: str, provider: str) -> ProcessingResponse | None:
        keys = await self.get(parent_id)
        found = keys.get(provider) if keys is not None else None
        if isinstance(found, str):
            raise gateway_unavailable(
                "The gateway cannot read this account's provider key; the request was not sent."
            )
        return found

    async def _read(self, parent_id: str) -> ParentKeys:
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keyspace.provider_keys(parent_id))
            pipe.exists(keyspace.BYOK_PROJECTED_MARKER)
            tokens, projected = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise gateway_unavailable() from exc
        if not tokens and not projected:
            raise gateway_unavailable("The gateway is still loading its keys; retry in a moment.")
        return self._open(parent_id, tokens)

    def _open(self, parent_id: str, tokens: dict[bytes, bytes]) -> ParentKeys:
        keys: dict[str, ProcessingResponse | str] = {}
        for raw_name, raw_token in tokens.items():
            name = raw_name.decode()
            provider = self._providers.get(name)
            if provider is None:  # no longer configured: its key has nowhere to go
                continue
            if self._keyring is None:
                log.error("provider key of %s for %s: no master key configured", parent_id, name)
                keys[name] = UNREADABLE
                continue
            try:
                api_key = self._keyring.decrypt(
                    raw_token.decode(), provider_key_context(parent_id, name)
                )
            except (SecretsError, UnicodeDecodeError) as exc:
                log.error("provider key of %s for %s cannot be opened: %s", parent_id, name, exc)
                keys[name] = UNREADABLE
                continue
            keys[name] = forward_reply(name, provider, api_key)
        return keys

    def _invalidate(self, message: bytes) -> None:
        if message in _ALL:
            self._forget(None)
            return
        for entry in message.decode("ascii", "replace").split(","):
            entry = entry.strip()
            if entry.startswith(_PREFIX):
                self._forget(entry.removeprefix(_PREFIX))
