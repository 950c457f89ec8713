"""The control plane's PostgreSQL pool, whose connections go back without a reset round trip.

asyncpg's pool sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` each
time a connection is released: one more round trip per request. The control plane never leaves
session state on a pooled connection (its advisory locks are transaction-level, cursors live in
transactions, LISTEN and the migration lock use connections of their own), and asyncpg still
rolls back a transaction left open, so the query is skipped.
"""

from __future__ import annotations

import asyncpg


class _NoSessionStateConnection(asyncpg.Connection):
    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, *, max_size: int, command_timeout: float) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        connection_class=_NoSessionStateConnection,
    )
    return pool
