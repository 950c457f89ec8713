"""The JSON objects the API answers with, built from records (shapes in `schemas`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from aigw.config import TierConfig
from aigw.periods import current_period
from controlplane.clock import iso_z
from controlplane.models import ParentAccount, SubAccount
from controlplane.spend import spend_object, spend_view
from extproc.limits import LimitStore


async def sub_account(
    redis: aioredis.Redis,
    sub: SubAccount,
    now: datetime,
    key: str | None = None,
    *,
    pool: asyncpg.Pool | None = None,
    limits: LimitStore | None = None,
    new: bool = False,
) -> dict[str, Any]:
    """The `sub_account` object with live `spend`; `key` only on create and rotate. Amounts are
    `Decimal`: answer with `controlplane.responses.ExactJSONResponse`. With `pool`, the spend is
    read from the ledger while Redis cannot tell it (`spend.spent_microcents`); `limits` is the
    process's `LimitStore` (`ctx.projector.limits`). A `new` sub-account (just created) has spent
    nothing: its spend is not read."""
    body: dict[str, Any] = {"id": sub.id, "object": "sub_account"}
    if key is not None:
        body["key"] = key
    body |= {
        "name": sub.name,
        "tier": sub.tier,
        "spend_cap_cents": sub.spend_cap_cents,
        "budget_period": sub.budget_period,
        "rate_limit_rpm": sub.rate_limit_rpm,
        "rate_limit_rpd": sub.rate_limit_rpd,
        "rate_limit_tpm": sub.rate_limit_tpm,
        "allowed_models": list(sub.allowed_models),
        "default_tag": sub.default_tag,
        "metadata": sub.metadata,
        "byok": sub.byok,
        "status": sub.status,
        "expires_at": iso_z(sub.expires_at),
        "created_at": iso_z(sub.created_at),
        "spend": (
            spend_object(sub, current_period(sub.budget_period, sub.created_at, now), 0)
            if new
            else await spend_view(redis, sub, now, pool, limits)
        ),
    }
    return body


def account(parent: ParentAccount) -> dict[str, Any]:
    return {
        "id": parent.id,
        "object": "account",
        "name": parent.name,
        "created_at": iso_z(parent.created_at),
    }


def tier(name: str, values: TierConfig) -> dict[str, Any]:
    return {
        "object": "tier",
        "name": name,
        "spend_cap_cents": values.spend_cap_cents,
        "budget_period": values.budget_period,
        "rate_limit_rpm": values.rate_limit_rpm,
        "rate_limit_rpd": values.rate_limit_rpd,
        "rate_limit_tpm": values.rate_limit_tpm,
        "allowed_models": list(values.allowed_models),
        "byok": values.byok,
    }


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more}
