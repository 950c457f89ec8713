"""BYOK provider keys: attach, detach, list; and what start-up owes them.

    service = await ProviderKeyService.start(config, pool, redis, clock)   # in the app lifespan
    await service.attach(parent_id, provider, api_key) / detach(...) / list(parent_id)
    await service.stop()

Every change is written to PostgreSQL (sealed with the master key, `aigw.secrets_box`) and,
under the parent's row lock, projected to Redis and announced to every extproc
(`ProviderKeyProjector`), so it takes effect on the data plane within a second.

Start-up (`start`, and `prepare` for `aigw up` before anything runs):
- refuses to run when stored keys were sealed with a master key the configuration lacks (none
  configured at all, or another one) — the message names the key ids; never a silent fallback;
- after a rotation (new `secrets_key`, the old one in `secrets_previous_keys`) re-seals every
  key with the new master key and re-projects it; the old key can then be dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from itertools import groupby

import asyncpg

from aigw.config import GENERATE_MASTER_KEY, GatewayConfig
from aigw.errors import GatewayError
from aigw.redis_client import REDIS_ERRORS, AsyncRedis
from aigw.redis_client import connect as connect_redis
from aigw.secrets_box import Keyring, SecretsError, provider_key_context
from controlplane import provider_key_store as store
from controlplane.clock import Clock, utc_now
from controlplane.provider_key_projector import ProviderKeyProjector
from controlplane.provider_key_store import ProviderKeyRow

log = logging.getLogger(__name__)

_MASKED_MIN_LENGTH = 8
"""Keys shorter than this show no characters at all when listed."""
_RESEAL_PAGE = 200


class ProviderKeysUnreadable(Exception):
    """Stored provider keys cannot be opened with the configured master keys."""


def last4(api_key: str) -> str:
    """What a listing shows of a key: its last 4 characters (none of a very short key)."""
    return api_key[-4:] if len(api_key) >= _MASKED_MIN_LENGTH else ""


async def check_stored_keys(conn: store.Executor, keyring: Keyring | None) -> None:
    """Raise `ProviderKeysUnreadable` (a message for the operator) when a stored key was sealed
    with a master key that `keyring` does not hold."""
    counts = await store.count_by_key_id(conn)
    if not counts:
        return
    total = sum(counts.values())
    sealed_with = ", ".join(sorted(counts))
    if keyring is None:
        raise ProviderKeysUnreadable(
            f"{total} BYOK provider key(s) are stored encrypted (master key id {sealed_with}), "
            "but no master key is configured: set `secrets_key` (e.g. "
            "`secrets_key: ${AIGW_SECRETS_KEY}`) to the key they were sealed with. "
            "Refusing to start rather than route their traffic with the platform's keys."
        )
    unknown = sorted(set(counts) - set(keyring.key_ids))
    if unknown:
        count = sum(counts[kid] for kid in unknown)
        raise ProviderKeysUnreadable(
            f"{count} BYOK provider key(s) are sealed with master key id {', '.join(unknown)}, "
            f"which the configuration does not hold (configured: {', '.join(keyring.key_ids)}). "
            "Set `secrets_key` to that key, or list it under `secrets_previous_keys` while "
            "rotating (docs/provider-keys.md). Refusing to start."
        )


async def check_database(dsn: str, config: GatewayConfig) -> None:
    """`check_stored_keys` on a migrated database, for `aigw up` before it starts the parts."""
    try:
        keyring = Keyring.from_config(config)
    except SecretsError as exc:
        raise ProviderKeysUnreadable(str(exc)) from None
    conn = await asyncpg.connect(dsn)
    try:
        await check_stored_keys(conn, keyring)
    finally:
        await conn.close()


async def prepare(config: GatewayConfig) -> None:
    """For `aigw up` before any part starts: `check_database`, then one projection to Redis
    (when it answers; the control plane keeps it projected), so extproc can serve at once."""
    assert config.database_url
    await check_database(config.database_url, config)
    if not config.redis_url:
        return
    pool = await asyncpg.create_pool(config.database_url, min_size=1, max_size=2)
    redis = connect_redis(config.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        await ProviderKeyProjector(pool, redis).project_all()
    except REDIS_ERRORS as exc:
        log.warning("provider keys not projected yet (%s); the control plane will", exc)
    finally:
        await redis.aclose()
        await pool.close()


def secrets_not_configured() -> GatewayError:
    return GatewayError(
        503,
        "secrets_not_configured",
        "api_error",
        "The gateway has no master key to encrypt provider keys with: the operator must set "
        f"`secrets_key` (generate one with: {GENERATE_MASTER_KEY}).",
    )


class ProviderKeyService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: AsyncRedis,
        keyring: Keyring | None,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._clock = clock
        self.projector = ProviderKeyProjector(pool, redis, clock)
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        config: GatewayConfig,
        pool: asyncpg.Pool,
        redis: AsyncRedis,
        clock: Clock = utc_now,
        reproject_interval: float = 1.0,
    ) -> ProviderKeyService:
        """Check the stored keys (raises `ProviderKeysUnreadable`), re-seal after a rotation,
        project them and keep them projected."""
        try:
            keyring = Keyring.from_config(config)
        except SecretsError as exc:
            raise ProviderKeysUnreadable(str(exc)) from None
        try:
            await check_stored_keys(pool, keyring)
        except ProviderKeysUnreadable as exc:
            log.error("%s", exc)
            raise
        service = cls(pool, redis, keyring, clock)
        if keyring is not None:
            resealed = await service.reseal()
            if resealed:
                log.info(
                    "re-sealed %d provider keys with master key %s", resealed, keyring.primary_id
                )
        try:
            await service.projector.project_all()
        except REDIS_ERRORS as exc:
            log.warning("Redis does not answer (%s); provider keys will be projected later", exc)
        service._watcher = asyncio.create_task(
            service.projector.keep_projected(reproject_interval), name="provider-key-projection"
        )
        return service

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def attach(self, parent_id: str, provider: str, api_key: str) -> ProviderKeyRow:
        """Seal and store (or replace) the parent's key for `provider`; effective at once."""
        keyring = self._keyring
        if keyring is None:
            raise secrets_not_configured()
        token = keyring.encrypt(api_key, provider_key_context(parent_id, provider))
        async with self._pool.acquire() as conn, conn.transaction():
            await store.lock_parent(conn, parent_id)
            row = await store.upsert(
                conn,
                parent_id,
                provider,
                token,
                keyring.primary_id,
                last4(api_key),
                self._clock(),
            )
            await self.projector.project_parent(conn, parent_id)
        return row

    async def detach(self, parent_id: str, provider: str) -> bool:
        """Remove the parent's key for `provider`; False when none was attached."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.lock_parent(conn, parent_id)
            if not await store.delete(conn, parent_id, provider):
                return False
            await self.projector.project_parent(conn, parent_id)
        return True

    async def list(self, parent_id: str) -> list[ProviderKeyRow]:
        return await store.of_parent(self._pool, parent_id)

    async def reseal(self) -> int:
        """Re-seal every key not sealed with the current master key; the number re-sealed."""
        keyring = self._keyring
        if keyring is None:
            return 0
        resealed, after = 0, ("", "")
        while True:
            rows = await store.sealed_with_other_keys(
                self._pool, keyring.primary_id, after, _RESEAL_PAGE
            )
            if not rows:
                return resealed
            for parent_id, group in groupby(rows, key=lambda row: row.parent_id):
                resealed += await self._reseal_parent(keyring, parent_id, list(group))
            after = (rows[-1].parent_id, rows[-1].provider)

    async def _reseal_parent(
        self, keyring: Keyring, parent_id: str, rows: list[ProviderKeyRow]
    ) -> int:
        done = 0
        async with self._pool.acquire() as conn, conn.transaction():
            await store.lock_parent(conn, parent_id)
            for row in rows:
                context = provider_key_context(row.parent_id, row.provider)
                try:
                    plaintext = keyring.decrypt(row.ciphertext, context)
                except SecretsError as exc:
                    raise ProviderKeysUnreadable(
                        f"the provider key of {row.parent_id} for {row.provider}: {exc}"
                    ) from None
                token = keyring.encrypt(plaintext, context)
                done += await store.reseal(conn, row, token, keyring.primary_id)
            await self.projector.project_parent(conn, parent_id)
        return done
