"""Every Redis key and channel name, built in one place.

The usage stream is sharded: `USAGE_SHARDS` streams `aigw:{u<n>}:usage`, an owner (a sub-account,
or a parent for its own traffic) belonging to shard `crc32(owner id) mod USAGE_SHARDS`. Every key
of an owner carries its shard's hash tag (`aigw:{u<n>}:<owner id>:…`), so that the admission and
settle scripts, which touch the owner's keys and append to its shard's stream, each stay in one
Redis Cluster slot — the same names on a standalone Redis (docs/scaling.md).
No other module spells a key with an f-string.
"""

from __future__ import annotations

import zlib
from typing import Final

PREFIX = "aigw"
INVALIDATION_CHANNEL = f"{PREFIX}:invalidate"
PROJECTED_MARKER = f"{PREFIX}:projected"


def key_policy(key_hash: str) -> str:
    """The policy (JSON) that a key hash authenticates to."""
    return f"{PREFIX}:key:{key_hash}"


# Spend caps, rate limits and metering (docs/internals.md, "Spend caps, rate limits and metering")

USAGE_SHARDS: Final = 64
"""How many usage streams there are. Fixed: changing it moves every owner to another shard
(docs/scaling.md)."""
USAGE_CONSUMER_GROUP = "ingest"
"""The ingester's consumer group, on every shard's stream."""


def usage_shard(owner_id: str) -> int:
    """The shard of an owner: stable across processes and versions (CRC-32, not `hash()`)."""
    return zlib.crc32(owner_id.encode()) % USAGE_SHARDS


def _shard_tag(shard: int) -> str:
    return f"{PREFIX}:{{u{shard}}}"


def usage_stream(shard: int) -> str:
    """The usage stream of one shard."""
    return f"{_shard_tag(shard)}:usage"


def usage_streams() -> list[str]:
    """Every shard's usage stream, in shard order."""
    return [usage_stream(shard) for shard in range(USAGE_SHARDS)]


def owner_usage_stream(owner_id: str) -> str:
    """The stream the owner's usage, budget and rate-limited events are appended to."""
    return usage_stream(usage_shard(owner_id))


def owner_tag(owner_id: str) -> str:
    """The prefix of everything the hot path keeps for one owner: its shard's hash tag, then
    its id."""
    return f"{_shard_tag(usage_shard(owner_id))}:{owner_id}"


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
    """Hash: provider name → the parent's provider key, sealed (`aigw.secrets_box`), never plain.
    Read and written alone (no script), so it keeps a hash tag of its own: the parent id."""
    return f"{PREFIX}:{{{parent_id}}}:byok"


PROVIDER_KEYS_PATTERN = f"{PREFIX}:{{*}}:byok"
"""SCAN pattern of every parent's `provider_keys` hash (SCAN runs on every primary of a
cluster)."""


def byok_invalidation(parent_id: str) -> str:
    """Invalidation message entry: drop this parent's cached provider keys."""
    return f"byok:{parent_id}"
