"""Webhook event types, the events the control plane itself writes, and the body of a delivery.

    row = sub_account_created(sub, now)         # inserted with `sub` (store.insert_sub_account)
    body = event_body(type, created_at, payload_json)

Every event is a row of the outbox `events` (migration 002), unique by `dedupe_key`; the
migration-004 trigger fans each new row out to the subscribed endpoints in the same transaction.
The usage ingester writes the budget, rate-limit and failure events; this module writes
`sub_account.created` (with the sub-account) and `webhook.test` (with its one delivery).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import orjson

from aigw.keys import new_id
from controlplane.clock import iso_z
from controlplane.models import SubAccount

SUB_ACCOUNT_CREATED = "sub_account.created"
BUDGET_WARNING = "sub_account.budget.warning"
BUDGET_EXHAUSTED = "sub_account.budget.exhausted"
RATE_LIMITED = "sub_account.rate_limited"
REQUEST_FAILED = "sub_account.request.failed"
WEBHOOK_TEST = "webhook.test"
# What an endpoint may subscribe to (besides "*"); `webhook.test` goes to the endpoint tested.
EVENT_TYPES = (SUB_ACCOUNT_CREATED, BUDGET_WARNING, BUDGET_EXHAUSTED, RATE_LIMITED, REQUEST_FAILED)
ALL = "*"

# A row of `events`, its values in `EVENT_COLUMNS` order (`payload` as JSON text).
EVENT_COLUMNS = ("id", "type", "parent_id", "sub_account_id", "dedupe_key", "payload", "created_at")
EventRow = tuple[str, str, str, str | None, str, str, datetime]
_INSERT_EVENT = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)})
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (dedupe_key) DO NOTHING
"""


def sub_account_created(sub: SubAccount, now: datetime) -> EventRow:
    """The `sub_account.created` row of `events` for `sub`, in `EVENT_COLUMNS` order; the store
    inserts it with the sub-account, in the same statement."""
    payload = {
        "sub_account_id": sub.id,
        "name": sub.name,
        "default_tag": sub.default_tag,
        "tier": sub.tier,
        "spend_cap_cents": sub.spend_cap_cents,
        "budget_period": sub.budget_period,
        "rate_limit_rpm": sub.rate_limit_rpm,
        "rate_limit_rpd": sub.rate_limit_rpd,
        "rate_limit_tpm": sub.rate_limit_tpm,
        "allowed_models": list(sub.allowed_models),
        "metadata": sub.metadata,
        "status": sub.status,
        "expires_at": iso_z(sub.expires_at),
        "created_at": iso_z(sub.created_at),
    }
    return (
        new_id("evt"),
        SUB_ACCOUNT_CREATED,
        sub.parent_id,
        sub.id,
        f"created:{sub.id}",
        orjson.dumps(payload).decode(),
        now,
    )


async def webhook_test(
    conn: asyncpg.Connection, parent_id: str, endpoint_id: str, now: datetime
) -> str:
    """A `webhook.test` event and its one delivery, to `endpoint_id`; returns the event id.
    Call inside a transaction."""
    event_id = new_id("evt")
    payload = {"webhook_id": endpoint_id, "message": "A test event sent from the aigw API."}
    await conn.execute(
        _INSERT_EVENT,
        event_id,
        WEBHOOK_TEST,
        parent_id,
        None,
        f"webhook.test:{event_id}",
        orjson.dumps(payload).decode(),
        now,
    )
    await conn.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, next_attempt_at,"
        " created_at) VALUES ($1, $2, $3, now(), now())",
        endpoint_id,
        event_id,
        WEBHOOK_TEST,
    )
    await conn.execute("SELECT pg_notify('aigw_webhooks', '')")
    return event_id


def event_body(event_type: str, created_at: datetime, payload_json: str) -> str:
    """The JSON body of every attempt of a delivery: `{"type", "timestamp", "data"}`.
    `payload_json` is the stored `data` as PostgreSQL renders jsonb (stable across attempts)."""
    head = orjson.dumps({"type": event_type, "timestamp": iso_z(created_at)}).decode()
    return f'{head[:-1]},"data":{payload_json}}}'
