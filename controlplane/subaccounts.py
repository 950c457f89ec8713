"""Sub-account operations: tier defaults, then PostgreSQL, then the projector.

Every change commits first and is projected right after, so the data plane sees it within the
request (API.md §5: within 1 second).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aigw.config import GatewayConfig, TierConfig
from aigw.errors import invalid_request
from aigw.keys import generate_key, hash_key, new_id
from controlplane import store, webhook_events
from controlplane.context import Context
from controlplane.errors import not_found
from controlplane.models import SETTABLE_FIELDS, ApiKey, SubAccount

# Fields a tier gives defaults for.
TIER_FIELDS = (
    "spend_cap_cents",
    "budget_period",
    "rate_limit_rpm",
    "rate_limit_rpd",
    "rate_limit_tpm",
    "allowed_models",
    "byok",
)
# Defaults of the fields no tier covers.
_BASE = {"tier": None, "default_tag": None, "metadata": {}, "expires_at": None}


def tier_defaults(config: GatewayConfig, tier: str | None) -> dict[str, Any]:
    """The tier's values for `TIER_FIELDS` (no tier: the built-in defaults)."""
    if tier is None:
        values = TierConfig()
    elif tier in config.tiers:
        values = config.tiers[tier]
    else:
        known = ", ".join(sorted(config.tiers)) or "none"
        raise invalid_request(f"tier: unknown tier '{tier}' (configured: {known})", param="tier")
    defaults = {field: getattr(values, field) for field in TIER_FIELDS}
    defaults["allowed_models"] = list(values.allowed_models)
    return defaults


async def create(ctx: Context, parent_id: str, given: dict[str, Any]) -> tuple[SubAccount, str]:
    """A new sub-account from the given fields over its tier's defaults; returns its key."""
    fields = _BASE | tier_defaults(ctx.config, given.get("tier")) | given
    key = generate_key()
    key_hash = hash_key(key)
    asked = new_sub_account(new_id("sa"), parent_id, fields, ctx.clock())
    sub = await store.insert_sub_account(
        ctx.pool, asked, key_hash, webhook_events.sub_account_created(asked, asked.created_at)
    )
    await ctx.projector.start_spend(sub)  # its budget is ready before its key works
    first_key = ApiKey(
        key_hash=key_hash, parent_id=parent_id, sub_account_id=sub.id,
        created_at=sub.created_at, expires_at=None, revoked_at=None,
    )  # fmt: skip
    await ctx.projector.project_new_sub_account(sub, first_key)
    return sub, key


def new_sub_account(
    sub_account_id: str, parent_id: str, fields: dict[str, Any], now: datetime
) -> SubAccount:
    """The sub-account to insert: every settable field given (`fields`), active, created now."""
    settable = {field: fields[field] for field in SETTABLE_FIELDS}
    settable["allowed_models"] = tuple(settable["allowed_models"])
    return SubAccount(
        id=sub_account_id, parent_id=parent_id, status="active", created_at=now, updated_at=now,
        **settable,
    )  # fmt: skip


async def get(ctx: Context, parent_id: str, sub_account_id: str) -> SubAccount:
    sub = await store.get_sub_account(ctx.pool, sub_account_id, parent_id=parent_id)
    if sub is None:
        raise not_found("sub-account", sub_account_id)
    return sub


async def update(
    ctx: Context, parent_id: str, sub_account_id: str, given: dict[str, Any]
) -> SubAccount:
    """Change exactly the given fields; a new `tier` also resets the fields it has defaults for,
    except those given in the same request."""
    changes = dict(given)
    if given.get("tier") is not None:
        changes = tier_defaults(ctx.config, given["tier"]) | given
    if not changes:
        return await get(ctx, parent_id, sub_account_id)
    sub = await store.update_sub_account(ctx.pool, parent_id, sub_account_id, changes, ctx.clock())
    if sub is None:
        raise not_found("sub-account", sub_account_id)
    await ctx.projector.project_sub_account(sub.id)
    return sub


async def disable(ctx: Context, parent_id: str, sub_account_id: str) -> SubAccount:
    """Status `disabled` and its keys revoked; the row and its history stay."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        sub = await store.disable_sub_account(conn, parent_id, sub_account_id, ctx.clock())
    if sub is None:
        raise not_found("sub-account", sub_account_id)
    await ctx.projector.project_sub_account(sub.id)
    return sub


async def rotate(
    ctx: Context, parent_id: str, sub_account_id: str, grace_seconds: int
) -> tuple[SubAccount, str]:
    """A new key; the old ones die after `grace_seconds` (0: at once)."""
    key = generate_key()
    now = ctx.clock()
    async with ctx.pool.acquire() as conn, conn.transaction():
        sub = await store.get_sub_account(
            conn, sub_account_id, parent_id=parent_id, for_update=True
        )
        if sub is None:
            raise not_found("sub-account", sub_account_id)
        if sub.status != "active":
            raise invalid_request(
                f"Sub-account '{sub_account_id}' is disabled; its key cannot be rotated.",
                param="id",
            )
        await store.retire_keys(conn, sub.id, now + timedelta(seconds=grace_seconds))
        await store.insert_key(conn, hash_key(key), parent_id, sub.id, now)
    await ctx.projector.project_sub_account(sub.id)
    return sub, key
