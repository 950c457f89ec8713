"""Every SQL statement of webhooks (migration 004): endpoints, the delivery queue, the log.

Callers own transactions; each function takes a connection or the pool. The queue statements
are the dispatcher's (controlplane/dispatcher.py): `claim` takes due deliveries under a lease
with `FOR UPDATE SKIP LOCKED` (several control planes never take the same row), `finish`
records an attempt's outcome only for the lease holder, `release` hands rows back at a stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

Executor = asyncpg.Connection | asyncpg.Pool
Position = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    parent_id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of an endpoint's delivery log."""

    id: str
    event_id: str
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    outcome: str
    duration_ms: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery: everything one attempt needs."""

    delivery_id: int
    lease: str
    endpoint_id: str
    url: str
    sealed_secret: str
    event_id: str
    event_type: str
    attempt: int
    event_at: datetime | None  # None: the event row is gone (cannot be sent)
    payload: str | None  # the event's `data`, as PostgreSQL renders jsonb


_ENDPOINT_COLUMNS = "id, parent_id, url, events, description, created_at"
_ATTEMPT_COLUMNS = (
    "id, event_id, event_type, attempt, status_code, error, outcome, duration_ms, created_at"
)


def _endpoint(row: asyncpg.Record) -> Endpoint:
    fields = dict(row)
    fields["events"] = tuple(fields["events"])
    return Endpoint(**fields)


# Endpoints


async def insert_endpoint(
    conn: Executor,
    endpoint_id: str,
    parent_id: str,
    url: str,
    events: list[str],
    description: str | None,
    sealed_secret: str,
    now: datetime,
) -> Endpoint:
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (id, parent_id, url, events, description, secret,"
        f" created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_ENDPOINT_COLUMNS}",
        endpoint_id,
        parent_id,
        url,
        events,
        description,
        sealed_secret,
        now,
    )
    return _endpoint(row)


async def count_endpoints(conn: Executor, parent_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE parent_id = $1 AND deleted_at IS NULL",
            parent_id,
        )
    )


async def get_endpoint(conn: Executor, parent_id: str, endpoint_id: str) -> Endpoint | None:
    """A live endpoint of this parent (another parent's, or a deleted one: None)."""
    row = await conn.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
        " WHERE id = $1 AND parent_id = $2 AND deleted_at IS NULL",
        endpoint_id,
        parent_id,
    )
    return _endpoint(row) if row else None


async def list_endpoints(
    conn: Executor, parent_id: str, *, limit: int, after: Position | None = None
) -> tuple[list[Endpoint], bool]:
    """One page of live endpoints in creation order, and whether more follow."""
    args: list[Any] = [parent_id, limit + 1]
    cursor = ""
    if after is not None:
        args += list(after)
        cursor = " AND (created_at, id) > ($3, $4)"
    rows = await conn.fetch(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
        f" WHERE parent_id = $1 AND deleted_at IS NULL{cursor}"
        " ORDER BY created_at, id LIMIT $2",
        *args,
    )
    return [_endpoint(row) for row in rows[:limit]], len(rows) > limit


async def delete_endpoint(
    conn: asyncpg.Connection, parent_id: str, endpoint_id: str, now: datetime
) -> bool:
    """Soft delete inside a transaction: secret wiped, pending deliveries cancelled."""
    deleted = await conn.fetchval(
        "UPDATE webhook_endpoints SET deleted_at = $3, secret = ''"
        " WHERE id = $1 AND parent_id = $2 AND deleted_at IS NULL RETURNING id",
        endpoint_id,
        parent_id,
        now,
    )
    if deleted is None:
        return False
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'cancelled', lease = NULL, finished_at = $2"
        " WHERE endpoint_id = $1 AND status = 'pending'",
        endpoint_id,
        now,
    )
    return True


# The delivery log


async def attempt_position(conn: Executor, endpoint_id: str, attempt_id: str) -> Position | None:
    row = await conn.fetchrow(
        "SELECT created_at, id FROM webhook_attempts WHERE id = $1 AND endpoint_id = $2",
        attempt_id,
        endpoint_id,
    )
    return (row["created_at"], row["id"]) if row else None


async def list_attempts(
    conn: Executor, endpoint_id: str, *, limit: int, after: Position | None = None
) -> tuple[list[Attempt], bool]:
    """One page of the endpoint's attempts, newest first, and whether more follow."""
    args: list[Any] = [endpoint_id, limit + 1]
    cursor = ""
    if after is not None:
        args += list(after)
        cursor = " AND (created_at, id) < ($3, $4)"
    rows = await conn.fetch(
        f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE endpoint_id = $1{cursor}"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        *args,
    )
    return [Attempt(**dict(row)) for row in rows[:limit]], len(rows) > limit


# The queue (the dispatcher's)

_CLAIM = """
WITH due AS (
    SELECT d.id
    FROM webhook_endpoints w
    LEFT JOIN unnest($1::text[], $2::int[]) AS busy(endpoint_id, n) ON busy.endpoint_id = w.id
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at
        FROM webhook_deliveries d
        WHERE d.endpoint_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT greatest($3::int - coalesce(busy.n, 0), 0)
        FOR UPDATE OF d SKIP LOCKED
    ) d
    WHERE w.deleted_at IS NULL
    ORDER BY d.next_attempt_at
    LIMIT $4
), claimed AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, lease = $5,
        next_attempt_at = now() + make_interval(secs => $6::float8)
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.attempts
)
SELECT c.id, c.endpoint_id, w.url, w.secret, c.event_id, c.event_type, c.attempts,
       e.created_at AS event_at, e.payload::text AS payload
FROM claimed c
JOIN webhook_endpoints w ON w.id = c.endpoint_id
LEFT JOIN events e ON e.id = c.event_id
ORDER BY c.id
"""

_FINISH = """
WITH done AS (
    UPDATE webhook_deliveries
    SET status = $3, lease = NULL,
        next_attempt_at = CASE WHEN $3 = 'pending'
                               THEN now() + make_interval(secs => $4::float8)
                               ELSE next_attempt_at END,
        finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
    WHERE id = $1 AND lease = $2 AND status = 'pending'
    RETURNING id, endpoint_id, event_id, event_type
)
INSERT INTO webhook_attempts (id, delivery_id, endpoint_id, event_id, event_type, attempt,
                              status_code, error, outcome, duration_ms, created_at)
SELECT $5, id, endpoint_id, event_id, event_type, $6, $7, $8, $9, $10, $11 FROM done
"""


async def claim(
    conn: Executor,
    *,
    lease: str,
    lease_s: float,
    per_endpoint: int,
    limit: int,
    busy: dict[str, int],
) -> list[Job]:
    """Take up to `limit` due deliveries, at most `per_endpoint` minus `busy[endpoint]` from each
    endpoint (fair: a backlog at one endpoint never fills the batch), under `lease` for
    `lease_s` seconds. Each claim counts as an attempt started."""
    rows = await conn.fetch(
        _CLAIM, list(busy), list(busy.values()), per_endpoint, limit, lease, lease_s
    )
    return [
        Job(
            delivery_id=row["id"],
            lease=lease,
            endpoint_id=row["endpoint_id"],
            url=row["url"],
            sealed_secret=row["secret"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            attempt=row["attempts"],
            event_at=row["event_at"],
            payload=row["payload"],
        )
        for row in rows
    ]


async def finish(
    conn: Executor,
    job: Job,
    *,
    attempt_id: str,
    outcome: str,
    retry_in_s: float,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    started_at: datetime,
) -> bool:
    """Record an attempt: `outcome` `delivered`, `failed`, or `retrying` in `retry_in_s`.
    False when the lease was lost (another dispatcher took the row, or it was cancelled)."""
    status = "pending" if outcome == "retrying" else outcome
    result = await conn.execute(
        _FINISH,
        job.delivery_id,
        job.lease,
        status,
        retry_in_s,
        attempt_id,
        job.attempt,
        status_code,
        error,
        outcome,
        duration_ms,
        started_at,
    )
    return result.endswith(" 1")


async def release(conn: Executor, jobs: list[Job]) -> None:
    """Hand claimed rows back (a stop before their attempt ended): due now, attempt uncounted."""
    if jobs:
        await conn.execute(
            "UPDATE webhook_deliveries d SET lease = NULL, next_attempt_at = now(),"
            " attempts = greatest(d.attempts - 1, 0)"
            " FROM unnest($1::bigint[], $2::text[]) AS r(id, lease)"
            " WHERE d.id = r.id AND d.lease = r.lease AND d.status = 'pending'",
            [job.delivery_id for job in jobs],
            [job.lease for job in jobs],
        )
