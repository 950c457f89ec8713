"""Key policies by key hash: an in-process cache in front of Redis, kept fresh by pub/sub.

The control plane writes `aigw:key:<hash>` and then publishes the changed hashes (or `*`) on
`aigw:invalidate` (docs/internals.md). The cache is trusted only while the subscription is
connected and confirmed: on any disconnect it is emptied and lookups go to Redis until the
subscription is back. A lookup that raced an invalidation does not store its answer.

Every Redis failure here is fail-closed: it becomes 503 `gateway_unavailable`, as does a key that
is not found before the control plane has projected the policies (`aigw:projected` absent).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aigw import keyspace
from aigw.errors import gateway_unavailable
from aigw.policy import KeyPolicy

log = logging.getLogger(__name__)

REDIS_TIMEOUT = 0.5
"""Seconds to connect to Redis or wait for an answer before a request is refused with 503."""
SUBSCRIBER_NAME = "aigw-extproc-invalidations"
"""The Redis client name of the subscription (`CLIENT LIST`)."""
_CACHE_LIMIT = 100_000
_PING_AFTER = 5.0
"""Seconds of silence on the subscription after which it is pinged; no answer within as long
again and it counts as lost."""
_RECONNECT_BACKOFF = (0.05, 1.0)


class PolicyStore:
    """`lookup(key_hash)` → the key's `KeyPolicy`, or None for an unknown key."""

    def __init__(self, redis_url: str) -> None:
        options = {"socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": REDIS_TIMEOUT}
        # One immediate retry on a broken connection lets a pooled connection that Redis dropped
        # be replaced unnoticed; a timeout is not retried, so a stuck Redis costs one timeout.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._redis = Redis.from_url(redis_url, retry=retry, **options)
        # No retry on the subscription: redis-py would re-subscribe behind our back and the
        # invalidations published meanwhile would be lost without the cache being emptied.
        self._subscriber = Redis.from_url(
            redis_url, retry=Retry(NoBackoff(), 0), client_name=SUBSCRIBER_NAME, **options
        )
        self._cache: dict[str, KeyPolicy] = {}
        self._trusted = False
        self._generation = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        """Whether invalidations are being received, so that cached policies are trusted."""
        return self._trusted

    def start(self) -> None:
        """Start following invalidations (in the background, reconnecting for ever)."""
        self._task = asyncio.create_task(self._follow_invalidations(), name="policy-invalidations")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._subscriber.aclose()
        await self._redis.aclose()

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        policy = self._cache.get(key_hash)
        if policy is not None:
            return policy
        generation = self._generation
        try:
            raw = await self._redis.get(keyspace.key_policy(key_hash))
            if raw is None:
                if not await self._redis.exists(keyspace.PROJECTED_MARKER):
                    raise gateway_unavailable(
                        "The gateway is still loading its keys; retry in a moment."
                    )
                return None
        except RedisError as exc:
            raise gateway_unavailable() from exc
        try:
            policy = KeyPolicy.from_json(raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            log.error("unreadable key policy in Redis: %s", exc)
            raise gateway_unavailable() from exc
        if self._trusted and generation == self._generation:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key_hash] = policy
        return policy

    def _invalidate(self, message: bytes) -> None:
        """Drop the comma-separated key hashes of one invalidation message, or all for `*`."""
        self._generation += 1
        if message == b"*":
            self._cache.clear()
            return
        for key_hash in message.decode("ascii", "replace").split(","):
            self._cache.pop(key_hash.strip(), None)

    def _distrust(self) -> None:
        self._trusted = False
        self._generation += 1
        self._cache.clear()

    async def _follow_invalidations(self) -> None:
        delay = _RECONNECT_BACKOFF[0]
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(keyspace.INVALIDATION_CHANNEL)
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if self._trusted:
                    delay = _RECONNECT_BACKOFF[0]
                if delay == _RECONNECT_BACKOFF[0]:  # a working subscription lost, or the first try
                    log.warning("policy invalidations unavailable (%s); reconnecting", exc)
            finally:
                self._distrust()
                await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_BACKOFF[1])

    async def _listen(self, pubsub: PubSub) -> None:
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=_PING_AFTER)
            if message is None:
                if pinged:
                    raise RedisConnectionError("no answer to PING on the invalidation channel")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message["type"]
            if kind == "message":
                self._invalidate(message["data"])
            elif kind == "subscribe":
                self._generation += 1
                self._cache.clear()
                self._trusted = True
                log.info("following policy invalidations")
