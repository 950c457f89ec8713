"""An in-process cache in front of Redis, kept fresh by the control plane's invalidations.

The control plane publishes what it changed on `aigw:invalidate` (docs/internals.md). The cache
is trusted only while its subscription is connected and confirmed: on any disconnect it is
emptied and lookups go to Redis until the subscription is back. A lookup that raced an
invalidation does not store its answer (`generation`). Concurrent misses of one key share one
Redis read (`get`): a burst of first requests from a new key reads it once, not once per request,
and a lookup that starts after an invalidation never joins a read begun before it. Subclasses
say how a message maps to entries (`_invalidate`) and how one entry is read (`_read`).

Lookups go through `aigw.redis_client.connect` (one server or a Redis Cluster). The subscription
is a plain connection to one server: the Redis itself, or one seed node of a cluster (a cluster
delivers every PUBLISH to every node); each reconnection tries the next seed node.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
from typing import Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from aigw import keyspace
from aigw.redis_client import REDIS_ERRORS, connect, subscriber_urls, warm_up

log = logging.getLogger(__name__)

REDIS_TIMEOUT = 0.5
"""Seconds to connect to Redis or wait for an answer before a request is refused with 503."""
_CACHE_LIMIT = 100_000
_PING_AFTER = 5.0
"""Seconds of silence on the subscription after which it is pinged; no answer within as long
again and it counts as lost."""
_RECONNECT_BACKOFF = (0.05, 1.0)

Value = TypeVar("Value")


class InvalidatedCache(abc.ABC, Generic[Value]):
    def __init__(self, redis_url: str, subscriber_name: str, what: str) -> None:
        options = {"socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": REDIS_TIMEOUT}
        # One immediate retry on a broken connection lets a pooled connection that Redis dropped
        # be replaced unnoticed; a timeout is not retried, so a stuck Redis costs one timeout.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._redis = connect(redis_url, retry=retry, **options)
        # No retry on the subscription: redis-py would re-subscribe behind our back and the
        # invalidations published meanwhile would be lost without the cache being emptied.
        self._subscriber_urls = subscriber_urls(redis_url)
        self._subscriber_options = {
            "retry": Retry(NoBackoff(), 0),
            "client_name": subscriber_name,
            **options,
        }
        self._what = what
        self._cache: dict[str, Value] = {}
        self._reading: dict[str, tuple[int, asyncio.Future[Value | None]]] = {}
        """Reads in flight, by key, with the generation each began in."""
        self._trusted = False
        self._generation = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        """Whether invalidations are being received, so that cached entries are trusted."""
        return self._trusted

    def start(self) -> None:
        """Start following invalidations (in the background, reconnecting for ever)."""
        self._task = asyncio.create_task(
            self._follow_invalidations(), name=f"{self._what}-invalidations"
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._redis.aclose()

    async def get(self, key: str) -> Value | None:
        """The entry of `key`: from the cache, else read from Redis (`_read`) by one read shared
        with every lookup of `key` that misses while it runs. Raises what `_read` raises."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        generation = self._generation
        reading = self._reading.get(key)
        if reading is None or reading[0] != generation:
            read = asyncio.ensure_future(self._read_and_remember(key, generation))
            reading = (generation, read)
            self._reading[key] = reading
            read.add_done_callback(lambda done: self._read_done(key, done))
        # Shielded: a caller that goes away (its stream cancelled) leaves the read to the others.
        return await asyncio.shield(reading[1])

    async def _read_and_remember(self, key: str, generation: int) -> Value | None:
        value = await self._read(key)
        if value is not None:
            self._remember(key, value, generation)
        return value

    def _read_done(self, key: str, done: asyncio.Future[Value | None]) -> None:
        if self._reading.get(key, (0, None))[1] is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # retrieved, even when every caller has gone

    @abc.abstractmethod
    async def _read(self, key: str) -> Value | None:
        """Read one entry from Redis; None when there is none (not cached)."""

    def _remember(self, key: str, value: Value, generation: int) -> None:
        """Cache `value` if no invalidation arrived since `generation` was read."""
        if self._trusted and generation == self._generation:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = value

    def _forget(self, key: str | None) -> None:
        """Drop one entry, or every entry for None."""
        self._generation += 1
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    @abc.abstractmethod
    def _invalidate(self, message: bytes) -> None:
        """Apply one message of the invalidation channel (with `_forget`)."""

    def _distrust(self) -> None:
        self._trusted = False
        self._forget(None)

    async def _follow_invalidations(self) -> None:
        await warm_up(self._redis)
        delay = _RECONNECT_BACKOFF[0]
        for url in itertools.cycle(self._subscriber_urls):
            subscriber = Redis.from_url(url, **self._subscriber_options)
            pubsub = subscriber.pubsub()
            try:
                await pubsub.subscribe(keyspace.INVALIDATION_CHANNEL)
                await self._listen(pubsub)
            except REDIS_ERRORS as exc:
                if self._trusted:
                    delay = _RECONNECT_BACKOFF[0]
                if delay == _RECONNECT_BACKOFF[0]:  # a working subscription lost, or the first try
                    log.warning("%s invalidations unavailable (%s); reconnecting", self._what, exc)
            finally:
                self._distrust()
                await pubsub.aclose()
                await subscriber.aclose()
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
                self._forget(None)
                self._trusted = True
                log.info("following %s invalidations", self._what)
