"""Database migrations: numbered `.sql` files in `controlplane/migrations/`, applied in order.

Each file runs in its own transaction and is recorded in `schema_migrations` by its name without
`.sql` (`001_init`). A session-level advisory lock serialises concurrent runs (several replicas,
or the supervisor and a test), so running `migrate` again, or at the same time, is safe.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

_LOCK_ID = 0x61696777_6D696772  # "aigwmigr": one advisory lock for all migration runs
_FILE_PATTERN = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[str, str]]:
    """(version, SQL text) of every migration shipped in the package, in order."""
    folder = Path(__file__).with_name("migrations")
    names = sorted(entry.name for entry in folder.iterdir() if _FILE_PATTERN.match(entry.name))
    return [(name.removesuffix(".sql"), (folder / name).read_text("utf-8")) for name in names]


async def migrate(dsn: str) -> None:
    """Apply every migration not yet recorded in the database at `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await conn.fetch("SELECT version FROM schema_migrations")
            applied = {row["version"] for row in rows}
            for version, sql in migration_files():
                if version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
