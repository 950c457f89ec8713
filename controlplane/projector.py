"""The only writer of key policies to Redis (docs/internals.md, "Redis, as the control plane
projects it").

Every change is written to PostgreSQL first; then the owner's row is locked, its keys are read
back and written to Redis as `KeyPolicy` JSON, and their hashes are published on the
invalidation channel — all while the lock is held, so two concurrent changes of one owner reach
Redis in the order they were committed.

A key's entry:
- live key: its owner's policy;
- rotated-out key in its grace: `key_expires_at` set and a Redis TTL `TTL_MARGIN` past it;
- rotated-out key past its grace: deleted;
- key of a disabled sub-account: `status: disabled`, kept so extproc says "revoked".

If Redis fails after PostgreSQL committed, the change is not lost: the projector notes that Redis
is stale and `keep_projected` rebuilds everything once Redis answers again.

The invalidation is published only after the writes are done (a second round trip): a Redis
Cluster runs a pipeline's commands on several nodes at once and refuses PUBLISH inside one, and
an extproc that heard of a change before it was written would cache the old policy.

A sub-account just created is the exception to the lock (`project_new_sub_account`, the hot path
of `POST /v1/sub-accounts`): its first key is written from what the insert returned, without
locking and re-reading the row, and only if the key has no entry yet (`SET NX`), so a change
projected in between is never overwritten by the older state.

Spend: `project_all` also rebuilds the current-period spend of every sub-account whose state is
not ready in Redis (`controlplane.spend_rebuild`) before it sets the `projected` marker; a new
sub-account's spend is made ready (0) before its key is projected (`start_spend`), so the data
plane never sees its key without its budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from aigw import keyspace
from aigw.policy import KeyPolicy
from aigw.redis_client import REDIS_ERRORS, AsyncRedis
from controlplane import projection_loop, store
from controlplane.clock import Clock, epoch, iso_z, utc_now
from controlplane.models import ApiKey, ParentAccount, SubAccount
from controlplane.spend_rebuild import SpendRebuilder
from extproc.limits import LimitStore, LimitStoreUnavailable

log = logging.getLogger(__name__)

TTL_MARGIN = timedelta(seconds=60)
# A single owner's projection also deletes keys whose grace ended this recently.
_RECENTLY_EXPIRED = timedelta(days=1)
_PAGE = 500


def sub_account_policy(sub: SubAccount, key: ApiKey) -> KeyPolicy:
    revoked = sub.status != "active" or key.revoked_at is not None
    return KeyPolicy(
        kind="sub_account",
        parent_id=sub.parent_id,
        sub_account_id=sub.id,
        name=sub.name,
        status="disabled" if revoked else "active",
        default_tag=sub.default_tag,
        allowed_models=sub.allowed_models,
        byok=sub.byok,
        spend_cap_cents=sub.spend_cap_cents,
        budget_period=sub.budget_period,
        rate_limit_rpm=sub.rate_limit_rpm,
        rate_limit_rpd=sub.rate_limit_rpd,
        rate_limit_tpm=sub.rate_limit_tpm,
        expires_at=epoch(sub.expires_at),
        key_expires_at=epoch(key.expires_at),
    )


def parent_policy(parent: ParentAccount, key: ApiKey) -> KeyPolicy:
    return KeyPolicy(
        kind="parent",
        parent_id=parent.id,
        sub_account_id=None,
        name=parent.name,
        status="disabled" if key.revoked_at is not None else "active",
        key_expires_at=epoch(key.expires_at),
    )


class Projector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: AsyncRedis,
        clock: Clock = utc_now,
        limits: LimitStore | None = None,
    ):
        self._pool = pool
        self._redis = redis
        self._clock = clock
        self._stale = False
        self.limits = limits or LimitStore(redis)
        self.spend = SpendRebuilder(pool, redis, self.limits, clock)

    async def start_spend(self, sub: SubAccount) -> None:
        """A sub-account just created: its spend ready (0) in Redis, before its key is
        projected. A Redis failure is logged and left to `keep_projected` (which rebuilds every
        owner that is not ready)."""
        try:
            await self.spend.start_fresh(sub)
        except (LimitStoreUnavailable, *REDIS_ERRORS) as exc:
            self._stale = True
            log.warning("spend of %s not yet ready in Redis (%s); will retry", sub.id, exc)

    async def project_sub_account(self, sub_account_id: str) -> None:
        """Re-project every key of one sub-account after a change to it."""
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            sub = await store.get_sub_account(conn, sub_account_id, for_update=True)
            if sub is None:
                return
            keys = await store.keys_of_sub_accounts(conn, [sub.id], now - _RECENTLY_EXPIRED)
            await self._write([(key, sub_account_policy(sub, key)) for key in keys])

    async def project_new_sub_account(self, sub: SubAccount, key: ApiKey) -> None:
        """Project the first key of a sub-account just created from what its insert returned,
        without locking and re-reading the row. Written only if the key has no entry yet: one
        that exists was written by a later change of the sub-account (projected under the lock)
        or by `project_all`, never older than this. Nothing is published: no cache can hold a
        key that nobody has seen yet (the answer that reveals it is sent after this)."""
        try:
            await self._redis.set(
                keyspace.key_policy(key.key_hash), sub_account_policy(sub, key).to_json(), nx=True
            )
        except REDIS_ERRORS as exc:
            self._stale = True
            log.warning("key policy saved but not yet projected to Redis (%s); will retry", exc)

    async def project_parent(self, parent_id: str) -> None:
        """Re-project a parent's own keys."""
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            parent = await store.get_parent(conn, parent_id, for_update=True)
            if parent is None:
                return
            keys = await store.own_keys_of_parents(conn, [parent.id], now - _RECENTLY_EXPIRED)
            await self._write([(key, parent_policy(parent, key)) for key in keys])

    async def project_all(self) -> int:
        """Rebuild every key policy and every not-ready spend from PostgreSQL, then set the
        `projected` marker.

        Returns the number of keys written. Raises when Redis or PostgreSQL fails.
        """
        self._stale = False
        written = await self._project_all_parents() + await self._project_all_sub_accounts()
        await self.spend.rebuild_all()
        await self._redis.publish(keyspace.INVALIDATION_CHANNEL, "*")
        await self._redis.set(keyspace.PROJECTED_MARKER, iso_z(self._clock()) or "")
        log.info("projected %d key policies to Redis", written)
        return written

    async def keep_projected(self, interval: float = 1.0) -> None:
        """Run forever: rebuild everything when Redis lost the marker (flushed, restarted
        empty) or a write to it failed (`controlplane.projection_loop`)."""
        await projection_loop.keep_projected(
            self._project_if_lost, self._mark_stale, "key policies", interval
        )

    async def _project_if_lost(self) -> None:
        if self._stale or not await self._redis.exists(keyspace.PROJECTED_MARKER):
            await self.project_all()

    def _mark_stale(self) -> None:
        self._stale = True

    async def _project_all_parents(self) -> int:
        written, after = 0, ""
        while True:
            now = self._clock()
            async with self._pool.acquire() as conn, conn.transaction():
                parents = await store.parents_after(conn, after, _PAGE)
                if not parents:
                    return written
                by_id = {parent.id: parent for parent in parents}
                keys = await store.own_keys_of_parents(conn, list(by_id), now)
                written += await self._write(
                    [(key, parent_policy(by_id[key.parent_id], key)) for key in keys], strict=True
                )
            after = parents[-1].id

    async def _project_all_sub_accounts(self) -> int:
        written, after = 0, ""
        while True:
            now = self._clock()
            async with self._pool.acquire() as conn, conn.transaction():
                subs = await store.sub_accounts_after(conn, after, _PAGE)
                if not subs:
                    return written
                by_id = {sub.id: sub for sub in subs}
                keys = await store.keys_of_sub_accounts(conn, list(by_id), now)
                written += await self._write(
                    [
                        (key, sub_account_policy(by_id[key.sub_account_id or ""], key))
                        for key in keys
                    ],
                    strict=True,
                )
            after = subs[-1].id

    async def _write(
        self, entries: Sequence[tuple[ApiKey, KeyPolicy]], *, strict: bool = False
    ) -> int:
        """Write (or delete) each key's entry and publish their hashes. Unless `strict`, a Redis
        failure is logged and remembered for `keep_projected` instead of raised."""
        if not entries:
            return 0
        now = self._clock()
        pipe = self._redis.pipeline(transaction=False)
        for key, policy in entries:
            name = keyspace.key_policy(key.key_hash)
            if key.expires_at is None:
                pipe.set(name, policy.to_json())
            elif key.expires_at <= now:
                pipe.delete(name)
            else:
                ttl = key.expires_at - now + TTL_MARGIN
                pipe.set(name, policy.to_json(), px=int(ttl.total_seconds() * 1000))
        try:
            await pipe.execute()
            if not strict:
                changed = ",".join(key.key_hash for key, _ in entries)
                await self._redis.publish(keyspace.INVALIDATION_CHANNEL, changed)
        except REDIS_ERRORS as exc:
            if strict:
                raise
            self._stale = True
            log.warning("key policies saved but not yet projected to Redis (%s); will retry", exc)
        return len(entries)
