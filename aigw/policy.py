"""The policy a key authenticates to: who owns it and what it may do.

The control plane's projector is its only writer (to Redis, as JSON); extproc reads and caches
it. Both sides use this one type, so the wire form cannot drift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import orjson

KeyKind = Literal["parent", "sub_account"]


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    kind: KeyKind
    parent_id: str
    sub_account_id: str | None
    name: str
    status: str = "active"
    default_tag: str | None = None
    allowed_models: tuple[str, ...] = ("*",)
    byok: bool = True
    spend_cap_cents: int | None = None
    budget_period: str = "monthly"
    rate_limit_rpm: int | None = None
    rate_limit_rpd: int | None = None
    rate_limit_tpm: int | None = None
    expires_at: float | None = None
    key_expires_at: float | None = None

    @property
    def owner_id(self) -> str:
        """The id whose budget and limits a request of this key counts against."""
        return self.sub_account_id or self.parent_id

    def usable_at(self, now: float) -> bool:
        """Active, not expired, and (for a rotated-out key) still inside its grace period."""
        if self.status != "active":
            return False
        if self.expires_at is not None and now >= self.expires_at:
            return False
        return self.key_expires_at is None or now < self.key_expires_at

    def allows(self, model: str) -> bool:
        """Whether `provider/model` matches an exact name or a shell-style glob of the list."""
        return any(fnmatchcase(model, pattern) for pattern in self.allowed_models)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> KeyPolicy:
        fields: dict[str, Any] = orjson.loads(data)
        fields["allowed_models"] = tuple(fields.get("allowed_models") or ())
        return cls(**fields)
