"""The records the store reads and writes; plain values, no behaviour beyond naming."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Sub-account fields a client may set (API.md §6); the store writes exactly these columns.
SETTABLE_FIELDS = (
    "name",
    "tier",
    "spend_cap_cents",
    "budget_period",
    "rate_limit_rpm",
    "rate_limit_rpd",
    "rate_limit_tpm",
    "allowed_models",
    "default_tag",
    "metadata",
    "byok",
    "expires_at",
)


@dataclass(frozen=True, slots=True)
class ParentAccount:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SubAccount:
    id: str
    parent_id: str
    name: str
    tier: str | None
    spend_cap_cents: int | None
    budget_period: str
    rate_limit_rpm: int | None
    rate_limit_rpd: int | None
    rate_limit_tpm: int | None
    allowed_models: tuple[str, ...]
    default_tag: str | None
    metadata: dict[str, Any]
    byok: bool
    status: str
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One stored key: its hash and whose it is. `sub_account_id` is None for a parent's key."""

    key_hash: str
    parent_id: str
    sub_account_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def live_at(self, now: datetime) -> bool:
        """Not revoked and, if rotated out, still inside its grace."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)
