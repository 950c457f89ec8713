"""A warning for requests refused because Redis failed, at most one line per interval.

A Redis outage refuses every request with 503; one log line per request would flood the log at
thousands per second, none at all would leave the operator guessing (the 503 body says only
"retry shortly"). The first failure is logged at once, later ones are counted and summed up in
the next line, no sooner than `interval` seconds after the last. Redis errors name the server
and what went wrong, never a key."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("extproc.redis")


class ThrottledFailureLog:
    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last_logged = -interval
        self._unlogged = 0

    def failed(self, cause: BaseException) -> None:
        """One request refused because of `cause`."""
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_logged < self._interval:
            return
        log.warning(
            "Redis failed, requests refused with 503 (%d since the last report): %s: %s",
            self._unlogged,
            type(cause).__name__,
            cause,
        )
        self._last_logged = now
        self._unlogged = 0
