"""Every SQL statement of the control plane; rows in, records (`models`) out.

Callers own transactions: each function takes a connection (or the pool, for a single
statement) and the current time, so the clock stays injectable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from controlplane.models import SETTABLE_FIELDS, ApiKey, ParentAccount, SubAccount
from controlplane.webhook_events import EVENT_COLUMNS, EventRow

Executor = asyncpg.Connection | asyncpg.Pool
Position = tuple[datetime, str]

_FIRST_PARENT_LOCK = 0x61696777_66697273  # "aigwfirs": serialises ensure_first_parent
_PARENT_COLUMNS = "id, name, created_at"
_SUB_COLUMNS = (
    "id, parent_id, name, tier, spend_cap_cents, budget_period, rate_limit_rpm, rate_limit_rpd,"
    " rate_limit_tpm, allowed_models, default_tag, metadata::text AS metadata, byok, status,"
    " expires_at, created_at, updated_at"
)
_KEY_COLUMNS = "key_hash, parent_id, sub_account_id, created_at, expires_at, revoked_at"


def _parent(row: asyncpg.Record) -> ParentAccount:
    return ParentAccount(id=row["id"], name=row["name"], created_at=row["created_at"])


def _sub(row: asyncpg.Record) -> SubAccount:
    fields = dict(row)
    fields["allowed_models"] = tuple(fields["allowed_models"])
    fields["metadata"] = orjson.loads(fields["metadata"])
    return SubAccount(**fields)


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(**dict(row))


def _column_value(field: str, value: Any) -> Any:
    if field == "metadata":
        return orjson.dumps(value).decode()
    if field == "allowed_models":
        return list(value)
    return value


def _placeholder(column: str, index: int) -> str:
    return f"${index}::jsonb" if column in ("metadata", "payload") else f"${index}"


# Parent accounts


async def insert_parent(
    conn: Executor, parent_id: str, name: str, key_hash: str, now: datetime
) -> ParentAccount:
    """A parent account and its key; call inside a transaction."""
    row = await conn.fetchrow(
        f"INSERT INTO parent_accounts (id, name, created_at) VALUES ($1, $2, $3)"
        f" RETURNING {_PARENT_COLUMNS}",
        parent_id,
        name,
        now,
    )
    await insert_key(conn, key_hash, parent_id, None, now)
    return _parent(row)


async def get_parent(
    conn: Executor, parent_id: str, *, for_update: bool = False
) -> ParentAccount | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_PARENT_COLUMNS} FROM parent_accounts WHERE id = $1{lock}", parent_id
    )
    return _parent(row) if row else None


async def lock_first_parent(conn: asyncpg.Connection) -> bool:
    """Take the first-parent lock until the transaction ends; True when no parent exists yet."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _FIRST_PARENT_LOCK)
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM parent_accounts)")


async def parents_after(conn: asyncpg.Connection, after_id: str, count: int) -> list[ParentAccount]:
    """A page of parents in id order, share-locked so no update is projected meanwhile."""
    rows = await conn.fetch(
        f"SELECT {_PARENT_COLUMNS} FROM parent_accounts WHERE id > $1 ORDER BY id LIMIT $2"
        " FOR SHARE",
        after_id,
        count,
    )
    return [_parent(row) for row in rows]


# Sub-accounts


async def insert_sub_account(
    conn: Executor, sub: SubAccount, key_hash: str, created_event: EventRow
) -> SubAccount:
    """`sub` as the client asked for it, its first key and its `sub_account.created` event, in
    one statement (one round trip, atomic without an explicit transaction); returns the row."""
    columns = ["id", "parent_id", "status", "created_at", "updated_at", *SETTABLE_FIELDS]
    values = [_column_value(column, getattr(sub, column)) for column in columns]
    placeholders = [_placeholder(column, index) for index, column in enumerate(columns, 1)]
    key_at = len(values) + 1
    event_placeholders = [
        _placeholder(column, index) for index, column in enumerate(EVENT_COLUMNS, key_at + 1)
    ]
    row = await conn.fetchrow(
        f"WITH new_sub AS (INSERT INTO sub_accounts ({', '.join(columns)})"
        f" VALUES ({', '.join(placeholders)}) RETURNING {_SUB_COLUMNS}),"
        " new_key AS (INSERT INTO api_keys (key_hash, parent_id, sub_account_id, created_at)"
        f" SELECT ${key_at}, parent_id, id, created_at FROM new_sub),"
        f" new_event AS (INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
        f" VALUES ({', '.join(event_placeholders)}) ON CONFLICT (dedupe_key) DO NOTHING)"
        " SELECT * FROM new_sub",
        *values,
        key_hash,
        *created_event,
    )
    return _sub(row)


async def get_sub_account(
    conn: Executor,
    sub_account_id: str,
    *,
    parent_id: str | None = None,
    for_update: bool = False,
) -> SubAccount | None:
    """One sub-account; with `parent_id`, only if it belongs to that parent."""
    query = f"SELECT {_SUB_COLUMNS} FROM sub_accounts WHERE id = $1"
    args: list[Any] = [sub_account_id]
    if parent_id is not None:
        query += " AND parent_id = $2"
        args.append(parent_id)
    row = await conn.fetchrow(query + (" FOR UPDATE" if for_update else ""), *args)
    return _sub(row) if row else None


async def position_of(conn: Executor, parent_id: str, sub_account_id: str) -> Position | None:
    """Where a sub-account sits in its parent's list order: the `?after=` cursor."""
    row = await conn.fetchrow(
        "SELECT created_at, id FROM sub_accounts WHERE id = $1 AND parent_id = $2",
        sub_account_id,
        parent_id,
    )
    return (row["created_at"], row["id"]) if row else None


async def list_sub_accounts(
    conn: Executor,
    parent_id: str,
    *,
    limit: int,
    after: Position | None = None,
    tag: str | None = None,
    status: str | None = None,
) -> tuple[list[SubAccount], bool]:
    """One page in creation order, and whether more follow."""
    conditions = ["parent_id = $1"]
    args: list[Any] = [parent_id]
    if tag is not None:
        args.append(tag)
        conditions.append(f"default_tag = ${len(args)}")
    if status is not None:
        args.append(status)
        conditions.append(f"status = ${len(args)}")
    if after is not None:
        args += list(after)
        conditions.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    rows = await conn.fetch(
        f"SELECT {_SUB_COLUMNS} FROM sub_accounts WHERE {' AND '.join(conditions)}"
        f" ORDER BY created_at, id LIMIT ${len(args)}",
        *args,
    )
    return [_sub(row) for row in rows[:limit]], len(rows) > limit


async def update_sub_account(
    conn: Executor, parent_id: str, sub_account_id: str, changes: dict[str, Any], now: datetime
) -> SubAccount | None:
    """Set exactly the given settable fields; None when the parent has no such sub-account."""
    unknown = set(changes) - set(SETTABLE_FIELDS)
    if unknown:
        raise ValueError(f"not settable: {sorted(unknown)}")
    args: list[Any] = [sub_account_id, parent_id, now]
    assignments = ["updated_at = $3"]
    for field, value in changes.items():
        args.append(_column_value(field, value))
        assignments.append(f"{field} = {_placeholder(field, len(args))}")
    row = await conn.fetchrow(
        f"UPDATE sub_accounts SET {', '.join(assignments)} WHERE id = $1 AND parent_id = $2"
        f" RETURNING {_SUB_COLUMNS}",
        *args,
    )
    return _sub(row) if row else None


async def disable_sub_account(
    conn: Executor, parent_id: str, sub_account_id: str, now: datetime
) -> SubAccount | None:
    """Status `disabled` and every unrevoked key revoked; inside a transaction."""
    row = await conn.fetchrow(
        f"UPDATE sub_accounts SET status = 'disabled', updated_at = $3"
        f" WHERE id = $1 AND parent_id = $2 RETURNING {_SUB_COLUMNS}",
        sub_account_id,
        parent_id,
        now,
    )
    if row is None:
        return None
    await conn.execute(
        "UPDATE api_keys SET revoked_at = $2 WHERE sub_account_id = $1 AND revoked_at IS NULL",
        sub_account_id,
        now,
    )
    return _sub(row)


# Keys


async def insert_key(
    conn: Executor, key_hash: str, parent_id: str, sub_account_id: str | None, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_hash, parent_id, sub_account_id, created_at)"
        " VALUES ($1, $2, $3, $4)",
        key_hash,
        parent_id,
        sub_account_id,
        now,
    )


async def retire_keys(conn: Executor, sub_account_id: str, until: datetime) -> None:
    """Make every live key of a sub-account die at `until` at the latest (rotation's grace)."""
    await conn.execute(
        "UPDATE api_keys SET expires_at = $2 WHERE sub_account_id = $1 AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > $2)",
        sub_account_id,
        until,
    )


async def find_key_and_parent(conn: Executor, key_hash: str) -> tuple[ApiKey, ParentAccount] | None:
    """A key and the parent account it belongs to, in one query (every authenticated call)."""
    row = await conn.fetchrow(
        "SELECT k.key_hash, k.parent_id, k.sub_account_id, k.created_at, k.expires_at,"
        " k.revoked_at, p.name AS parent_name, p.created_at AS parent_created_at"
        " FROM api_keys k JOIN parent_accounts p ON p.id = k.parent_id WHERE k.key_hash = $1",
        key_hash,
    )
    if row is None:
        return None
    key = ApiKey(
        key_hash=row["key_hash"], parent_id=row["parent_id"],
        sub_account_id=row["sub_account_id"], created_at=row["created_at"],
        expires_at=row["expires_at"], revoked_at=row["revoked_at"],
    )  # fmt: skip
    parent = ParentAccount(
        id=row["parent_id"], name=row["parent_name"], created_at=row["parent_created_at"]
    )
    return key, parent


async def keys_of_sub_accounts(
    conn: Executor, sub_account_ids: list[str], expired_since: datetime
) -> list[ApiKey]:
    """Keys of these sub-accounts, except those that expired before `expired_since`."""
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE sub_account_id = ANY($1)"
        " AND (expires_at IS NULL OR expires_at > $2)",
        sub_account_ids,
        expired_since,
    )
    return [_key(row) for row in rows]


async def own_keys_of_parents(
    conn: Executor, parent_ids: list[str], expired_since: datetime
) -> list[ApiKey]:
    """The parents' own keys (not their sub-accounts'), except those expired before then."""
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE parent_id = ANY($1)"
        " AND sub_account_id IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        parent_ids,
        expired_since,
    )
    return [_key(row) for row in rows]


async def sub_accounts_after(
    conn: asyncpg.Connection, after_id: str, count: int
) -> list[SubAccount]:
    """A page of all sub-accounts in id order, share-locked while it is projected."""
    rows = await conn.fetch(
        f"SELECT {_SUB_COLUMNS} FROM sub_accounts WHERE id > $1 ORDER BY id LIMIT $2 FOR SHARE",
        after_id,
        count,
    )
    return [_sub(row) for row in rows]


async def sub_accounts_page(conn: Executor, after_id: str, count: int) -> list[SubAccount]:
    """A page of all sub-accounts in id order, without locks."""
    rows = await conn.fetch(
        f"SELECT {_SUB_COLUMNS} FROM sub_accounts WHERE id > $1 ORDER BY id LIMIT $2",
        after_id,
        count,
    )
    return [_sub(row) for row in rows]


# Usage ledger (written by the ingester, `controlplane.ingester`)


async def ledger_spend(conn: Executor, periods: dict[str, str]) -> dict[str, int]:
    """Micro-cents (cost + fee) the ledger holds for each sub-account in the given period id
    (`{sub_account_id: period_id}`); sub-accounts without rows are absent."""
    if not periods:
        return {}
    rows = await conn.fetch(
        "SELECT l.sub_account_id, sum(l.cost_microcents + l.fee_microcents) AS spent"
        " FROM unnest($1::text[], $2::text[]) AS p(sub_account_id, period)"
        " JOIN usage_ledger l ON l.sub_account_id = p.sub_account_id AND l.period = p.period"
        " GROUP BY l.sub_account_id",
        list(periods),
        list(periods.values()),
    )
    return {row["sub_account_id"]: int(row["spent"]) for row in rows}


async def ledger_request_ids(conn: Executor, request_ids: list[str]) -> set[str]:
    """Which of these requests the ledger already holds."""
    if not request_ids:
        return set()
    rows = await conn.fetch(
        "SELECT request_id FROM usage_ledger WHERE request_id = ANY($1::text[])", request_ids
    )
    return {row["request_id"] for row in rows}


async def existing_event_keys(conn: Executor, dedupe_keys: list[str]) -> set[str]:
    """Which of these event dedupe keys the outbox already holds."""
    if not dedupe_keys:
        return set()
    rows = await conn.fetch(
        "SELECT dedupe_key FROM events WHERE dedupe_key = ANY($1::text[])", dedupe_keys
    )
    return {row["dedupe_key"] for row in rows}
