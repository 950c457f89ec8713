"""The operator's log of requests refused because Redis failed: the first failure at once, the
ones after it summed up in one line per interval, never one line per request."""

from __future__ import annotations

import logging
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from extproc.failure_log import ThrottledFailureLog

INTERVAL = 0.2


def test_an_outage_is_logged_at_once_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.redis")
    failures = ThrottledFailureLog(INTERVAL)
    refused = RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    failures.failed(refused)
    for _ in range(999):
        failures.failed(refused)
    assert len(caplog.messages) == 1
    assert "(1 since the last report): ConnectionError: Error 111" in caplog.messages[0]

    time.sleep(INTERVAL)
    failures.failed(refused)
    assert len(caplog.messages) == 2
    assert "(1000 since the last report)" in caplog.messages[1]
