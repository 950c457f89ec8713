"""The only writer of BYOK provider keys to Redis, where extproc reads them.

Per parent, `keyspace.provider_keys(parent_id)` is a hash provider → the token from PostgreSQL,
still sealed with the master key (extproc holds the key and opens it): Redis never holds a
plaintext provider key. After each write the parent's entry `byok:<parent_id>` is published on
the invalidation channel, so every extproc drops its cached keys of that parent at once.

`project_parent` runs inside the caller's transaction while the parent's row is locked, so two
changes of one parent reach Redis in the order they were committed. A Redis failure after the
commit marks the projection stale; `keep_projected` rebuilds everything once Redis answers, and
whenever `keyspace.BYOK_PROJECTED_MARKER` is missing (Redis flushed or restarted empty). Until
the marker is back extproc answers 503 rather than guess which key a parent uses.

A parent's hash is rewritten in one MULTI (one key, so one Redis Cluster slot) and the change
published after it: a cluster refuses PUBLISH inside a pipeline. Listing the hashes (SCAN) visits
every primary of a cluster.
"""

from __future__ import annotations

import logging

import asyncpg

from aigw import keyspace
from aigw.redis_client import REDIS_ERRORS, AsyncRedis
from controlplane import projection_loop
from controlplane import provider_key_store as store
from controlplane.clock import Clock, iso_z, utc_now

log = logging.getLogger(__name__)

_PAGE = 1000


class ProviderKeyProjector:
    def __init__(self, pool: asyncpg.Pool, redis: AsyncRedis, clock: Clock = utc_now):
        self._pool = pool
        self._redis = redis
        self._clock = clock
        self._stale = False

    async def project_parent(self, conn: asyncpg.Connection, parent_id: str) -> None:
        """Write one parent's keys as `conn` sees them and publish the change. A Redis failure
        is logged and left to `keep_projected`."""
        rows = await store.of_parent(conn, parent_id)
        name = keyspace.provider_keys(parent_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(name)
        if rows:
            pipe.hset(name, mapping={row.provider: row.ciphertext for row in rows})
        try:
            await pipe.execute()
            await self._redis.publish(
                keyspace.INVALIDATION_CHANNEL, keyspace.byok_invalidation(parent_id)
            )
        except REDIS_ERRORS as exc:
            self._stale = True
            log.warning("provider keys saved but not yet projected to Redis (%s); will retry", exc)

    async def project_all(self, announce: bool = False) -> int:
        """Rebuild every parent's hash from PostgreSQL (and delete the hashes of parents left
        without keys), then set the marker; with `announce`, tell every extproc to drop all its
        cached keys (`byok:*`) — needed after a change whose own announcement may be lost, not
        after a flush (a flush changes no key, and the policy projector then announces `*`).
        Returns the number of keys written; raises when Redis or PostgreSQL fails."""
        self._stale = False
        scanned = {
            _parent_of(name) async for name in self._redis.scan_iter(keyspace.PROVIDER_KEYS_PATTERN)
        }
        written, after = 0, ""
        while True:
            parent_ids = await store.parents_with_keys_after(self._pool, after, _PAGE)
            if not parent_ids:
                break
            written += await self._project_parents(parent_ids)
            scanned.difference_update(parent_ids)
            after = parent_ids[-1]
        leftover = sorted(scanned)
        for start in range(0, len(leftover), _PAGE):
            written += await self._project_parents(leftover[start : start + _PAGE])
        if announce:
            await self._redis.publish(keyspace.INVALIDATION_CHANNEL, keyspace.BYOK_INVALIDATE_ALL)
        await self._redis.set(keyspace.BYOK_PROJECTED_MARKER, iso_z(self._clock()) or "")
        log.info("projected %d provider keys to Redis", written)
        return written

    async def _project_parents(self, parent_ids: list[str]) -> int:
        """Rewrite these parents' hashes while their rows are locked (a concurrent change then
        reaches Redis after this, never before)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.lock_parents(conn, parent_ids)
            rows = await store.of_parents(conn, parent_ids)
            tokens: dict[str, dict[str, str]] = {parent_id: {} for parent_id in parent_ids}
            for row in rows:
                tokens[row.parent_id][row.provider] = row.ciphertext
            pipe = self._redis.pipeline(transaction=False)
            for parent_id, mapping in tokens.items():
                name = keyspace.provider_keys(parent_id)
                pipe.delete(name)
                if mapping:
                    pipe.hset(name, mapping=mapping)
            await pipe.execute()
        return len(rows)

    async def keep_projected(self, interval: float = 1.0) -> None:
        """Run forever: rebuild when the marker is missing or a write failed
        (`controlplane.projection_loop`)."""
        await projection_loop.keep_projected(
            self._project_if_lost, self._mark_stale, "provider keys", interval
        )

    async def _project_if_lost(self) -> None:
        if self._stale:
            await self.project_all(announce=True)
        elif not await self._redis.exists(keyspace.BYOK_PROJECTED_MARKER):
            await self.project_all()

    def _mark_stale(self) -> None:
        self._stale = True


def _parent_of(name: bytes | str) -> str:
    """The parent id inside a `keyspace.provider_keys` name (`aigw:{acct_…}:byok`)."""
    text = name.decode() if isinstance(name, bytes) else name
    return text[text.index("{") + 1 : text.rindex("}")]
