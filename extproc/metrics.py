"""extproc's Prometheus metrics: what was decided for each request, how long deciding took, and
how often Redis failed us.

    aigw_requests_total{decision}     admitted | answered | rejected_auth | rejected_model |
                                      rejected_budget | rejected_rate | invalid | unavailable
    aigw_admission_seconds            time spent in the request phases (headers + body) until
                                      the decision, this process's own work only
    aigw_redis_errors_total           requests failed closed (503) because Redis did not answer

Labels hold a fixed set of values only: never a key, an account or a model. The hot path pays
one `inc` and one `observe` per request (`decided`).

Several worker processes (`aigw up --extproc-workers N`) write to the directory named by
`$PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode, chosen when the variable is
set at start); the control plane's `/metrics` then serves their sum. A process started by hand
(one per container) serves its own on `--metrics-port` (`serve`). See docs/deployment.md.
"""

from __future__ import annotations

from threading import Thread
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

from aigw import redis_client
from aigw.errors import GatewayError
from aigw.metrics_registry import scrape_registry
from extproc.failure_log import ThrottledFailureLog
from extproc.limits.types import LimitStoreUnavailable

ADMITTED: Final = "admitted"
ANSWERED: Final = "answered"
_DECISION_OF_CODE: Final = {
    "invalid_api_key": "rejected_auth",
    "model_not_allowed": "rejected_model",
    "model_not_found": "rejected_model",
    "budget_exhausted": "rejected_budget",
    "rate_limit_exceeded": "rejected_rate",
    "gateway_unavailable": "unavailable",
}
_INVALID: Final = "invalid"
DECISIONS: Final = (ADMITTED, ANSWERED, *sorted(set(_DECISION_OF_CODE.values())), _INVALID)
_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REDIS_FAILURES: Final = (*redis_client.REDIS_ERRORS, LimitStoreUnavailable)

REQUESTS: Final = Counter(
    "aigw_requests", "Requests seen by extproc, by what was decided.", ["decision"]
)
ADMISSION_SECONDS: Final = Histogram(
    "aigw_admission_seconds",
    "extproc's own time from a request's headers to its decision (admit or refuse).",
    buckets=_BUCKETS,
)
REDIS_ERRORS: Final = Counter(
    "aigw_redis_errors", "Requests refused with 503 because Redis failed or did not answer."
)
_COUNTERS: Final = {decision: REQUESTS.labels(decision) for decision in DECISIONS}
_REDIS_FAILURE_LOG: Final = ThrottledFailureLog()


def decided(decision: str, seconds: float) -> None:
    """One request's decision, and the time extproc spent reaching it."""
    _COUNTERS[decision].inc()
    ADMISSION_SECONDS.observe(seconds)


def decision_of(error: GatewayError) -> str:
    """The decision an error answer stands for; counts (and logs, throttled) a Redis failure
    behind a 503."""
    decision = _DECISION_OF_CODE.get(error.code, _INVALID)
    if decision == "unavailable":
        cause = _redis_cause(error)
        if cause is not None:
            REDIS_ERRORS.inc()
            _REDIS_FAILURE_LOG.failed(cause)
    return decision


def _redis_cause(error: BaseException) -> BaseException | None:
    seen: BaseException | None = error.__cause__ or error.__context__
    while seen is not None:
        if isinstance(seen, _REDIS_FAILURES):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def serve(host: str, port: int) -> tuple[WSGIServer, Thread]:
    """Serve `/metrics` on `host:port` from a thread; `.shutdown()` the server to stop."""
    return start_http_server(port, addr=host, registry=scrape_registry())
