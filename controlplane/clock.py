"""Time as the control plane sees it: an injectable clock and the wire format of times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime | None) -> str | None:
    """`2026-11-27T10:00:00Z`: UTC, whole seconds, as API.md shows times."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def epoch(moment: datetime | None) -> float | None:
    """Unix seconds, as `KeyPolicy` carries times."""
    return None if moment is None else moment.timestamp()
