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
