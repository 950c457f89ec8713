"""Every Redis key and channel name, built in one place.

State of one sub-account (or of a parent's own traffic) shares the hash tag `{owner}` so that each
Lua script touches a single Redis Cluster slot. No other module spells a key with an f-string.
"""

from __future__ import annotations

PREFIX = "aigw"
INVALIDATION_CHANNEL = f"{PREFIX}:invalidate"
PROJECTED_MARKER = f"{PREFIX}:projected"


def key_policy(key_hash: str) -> str:
    """The policy (JSON) that a key hash authenticates to."""
    return f"{PREFIX}:key:{key_hash}"


def owner_tag(owner_id: str) -> str:
    """The hash tag of everything the hot path keeps for one sub-account or parent."""
    return f"{PREFIX}:{{{owner_id}}}"


# Spend caps, rate limits and metering (docs/internals.md, "Spend caps, rate limits and metering")

USAGE_STREAM = f"{PREFIX}:usage"
USAGE_CONSUMER_GROUP = "ingest"


def owner_state(owner_id: str) -> str:
    """Hash: `ready=1` once the control plane rebuilt the owner's current-period spend."""
    return f"{owner_tag(owner_id)}:state"


def owner_spend(owner_id: str, period_id: str) -> str:
    """Hash: `spent`, `reserved` (micro-cents), `warned` / `exhausted` flags of one period."""
    return f"{owner_tag(owner_id)}:spend:{period_id}"


def owner_reservations(owner_id: str, period_id: str) -> str:
    """Hash: request id → reserved micro-cents, of the period's open reservations."""
    return f"{owner_tag(owner_id)}:resv:{period_id}"


def owner_reservation_expiries(owner_id: str, period_id: str) -> str:
    """Sorted set: request id scored by its reservation's expiry (epoch ms)."""
    return f"{owner_tag(owner_id)}:rexp:{period_id}"


def owner_window(owner_id: str, window: str) -> str:
    """Hash of time buckets of one sliding window: `rpm`, `rpd` or `tpm`."""
    return f"{owner_tag(owner_id)}:win:{window}"


def owner_rate_limited_debounce(owner_id: str) -> str:
    """When the last `rate_limited` event was emitted (at most one a minute)."""
    return f"{owner_tag(owner_id)}:rl"


def owner_settled(owner_id: str, request_id: str) -> str:
    """Short-lived marker that makes a second settle of one request a no-op."""
    return f"{owner_tag(owner_id)}:settled:{request_id}"


# BYOK provider keys (docs/provider-keys.md)

BYOK_PROJECTED_MARKER = f"{PREFIX}:byok:projected"
"""Set once the control plane has projected every parent's provider keys after start-up."""
BYOK_INVALIDATE_ALL = "byok:*"
"""Invalidation message: drop every cached parent's provider keys."""


def provider_keys(parent_id: str) -> str:
    """Hash: provider name → the parent's provider key, sealed (`aigw.secrets_box`), never plain."""
    return f"{owner_tag(parent_id)}:byok"


PROVIDER_KEYS_PATTERN = f"{PREFIX}:{{*}}:byok"
"""SCAN pattern of every parent's `provider_keys` hash."""


def byok_invalidation(parent_id: str) -> str:
    """Invalidation message entry: drop this parent's cached provider keys."""
    return f"byok:{parent_id}"
