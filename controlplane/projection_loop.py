"""The background loop that keeps a projection to Redis whole (key policies, provider keys):
every `interval` seconds it runs one round, which re-projects when Redis lost the projection or
an earlier write failed. Failures are logged once per outage and retried; the loop outlives any
one failure, but never a cancellation — also not one a library swallowed or turned into its own
error (asyncpg's rollback of an interrupted transaction)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def keep_projected(
    round_: Callable[[], Awaitable[None]],
    mark_stale: Callable[[], None],
    what: str,
    interval: float,
) -> None:
    """Run `round_` every `interval` s forever; after a failure `mark_stale()` so that the next
    round rebuilds everything. `what` names the projection in the log."""
    failing = False
    while True:
        if _cancelling():
            raise asyncio.CancelledError
        await asyncio.sleep(interval)
        try:
            await round_()
            if failing:
                log.info("Redis answers again; %s are projected", what)
            failing = False
        except Exception as exc:  # the loop must outlive any one failure
            if _cancelling():
                raise asyncio.CancelledError from exc
            mark_stale()
            if not failing:
                log.warning("cannot project %s yet (%r); retrying", what, exc)
            failing = True


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
