"""Every SQL statement about BYOK provider keys (table `provider_keys`, migration 003).

Rows hold the key sealed (`aigw.secrets_box`), never the plaintext. Callers own transactions;
`lock_parent` serialises the changes of one parent's keys with their projection to Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

Executor = asyncpg.Connection | asyncpg.Pool
_COLUMNS = "parent_id, provider, ciphertext, key_id, last4, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class ProviderKeyRow:
    parent_id: str
    provider: str
    ciphertext: str
    key_id: str
    last4: str
    created_at: datetime
    updated_at: datetime


def _row(record: asyncpg.Record) -> ProviderKeyRow:
    return ProviderKeyRow(**dict(record))


async def lock_parent(conn: asyncpg.Connection, parent_id: str) -> bool:
    """Lock the parent's row until the transaction ends; False when there is no such parent."""
    found = await conn.fetchval("SELECT 1 FROM parent_accounts WHERE id = $1 FOR UPDATE", parent_id)
    return found is not None


async def upsert(
    conn: Executor,
    parent_id: str,
    provider: str,
    ciphertext: str,
    key_id: str,
    last4: str,
    now: datetime,
) -> ProviderKeyRow:
    """Attach or replace; a replaced key keeps its `created_at`."""
    record = await conn.fetchrow(
        f"INSERT INTO provider_keys ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)"
        " ON CONFLICT (parent_id, provider) DO UPDATE SET ciphertext = EXCLUDED.ciphertext,"
        " key_id = EXCLUDED.key_id, last4 = EXCLUDED.last4, updated_at = EXCLUDED.updated_at"
        f" RETURNING {_COLUMNS}",
        parent_id,
        provider,
        ciphertext,
        key_id,
        last4,
        now,
    )
    return _row(record)


async def delete(conn: Executor, parent_id: str, provider: str) -> bool:
    status = await conn.execute(
        "DELETE FROM provider_keys WHERE parent_id = $1 AND provider = $2", parent_id, provider
    )
    return bool(status != "DELETE 0")


async def of_parent(conn: Executor, parent_id: str) -> list[ProviderKeyRow]:
    """One parent's keys, by provider name."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM provider_keys WHERE parent_id = $1 ORDER BY provider", parent_id
    )
    return [_row(record) for record in records]


async def parents_with_keys_after(conn: Executor, after_id: str, count: int) -> list[str]:
    """Ids of parents with at least one key, in order, `count` after `after_id`."""
    records = await conn.fetch(
        "SELECT DISTINCT parent_id FROM provider_keys WHERE parent_id > $1"
        " ORDER BY parent_id LIMIT $2",
        after_id,
        count,
    )
    return [record["parent_id"] for record in records]


async def lock_parents(conn: asyncpg.Connection, parent_ids: list[str]) -> None:
    """Lock these parents' rows (in id order, so two lockers never deadlock)."""
    await conn.execute(
        "SELECT 1 FROM parent_accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        parent_ids,
    )


async def of_parents(conn: Executor, parent_ids: list[str]) -> list[ProviderKeyRow]:
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM provider_keys WHERE parent_id = ANY($1::text[])"
        " ORDER BY parent_id, provider",
        parent_ids,
    )
    return [_row(record) for record in records]


async def count_by_key_id(conn: Executor) -> dict[str, int]:
    """How many stored keys each master key sealed."""
    records = await conn.fetch("SELECT key_id, count(*) AS n FROM provider_keys GROUP BY key_id")
    return {record["key_id"]: int(record["n"]) for record in records}


async def sealed_with_other_keys(
    conn: Executor, key_id: str, after: tuple[str, str], count: int
) -> list[ProviderKeyRow]:
    """Up to `count` keys after `after` not sealed with master key `key_id` (what a rotation
    re-seals), in (parent_id, provider) order."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM provider_keys WHERE key_id <> $1"
        " AND (parent_id, provider) > ($2, $3) ORDER BY parent_id, provider LIMIT $4",
        key_id,
        after[0],
        after[1],
        count,
    )
    return [_row(record) for record in records]


async def reseal(conn: Executor, row: ProviderKeyRow, ciphertext: str, key_id: str) -> bool:
    """Replace one key's token by a re-sealed one, unless the key changed meanwhile."""
    status = await conn.execute(
        "UPDATE provider_keys SET ciphertext = $4, key_id = $5"
        " WHERE parent_id = $1 AND provider = $2 AND ciphertext = $3",
        row.parent_id,
        row.provider,
        row.ciphertext,
        ciphertext,
        key_id,
    )
    return bool(status != "UPDATE 0")
