"""API keys and object ids: generated from a CSPRNG, stored only as hashes.

A key is `sk-aig-` plus 43 URL-safe random characters (256 bits). Keys carry full entropy, so a
plain SHA-256 is the right storage hash: it is one-way and cheap enough for the hot path.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-aig-"
_KEY_BODY_MIN = 32


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_key(value: str) -> bool:
    """A cheap shape check before any lookup: prefix and enough characters."""
    return value.startswith(KEY_PREFIX) and len(value) >= len(KEY_PREFIX) + _KEY_BODY_MIN


def new_id(prefix: str) -> str:
    """An object id such as `acct_…`, `sa_…`, `wh_…`: 24 random hex characters."""
    return f"{prefix}_{secrets.token_hex(12)}"


def mask_secret(value: str) -> str:
    """Show only the last four characters of a secret."""
    return "…" + value[-4:] if len(value) > 4 else "…"
