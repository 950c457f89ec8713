"""The control plane's Prometheus metrics, served at `GET /metrics` on the control plane's own
port (not routed through Envoy: see docs/deployment.md).

    aigw_http_requests_total{method,route,status}    by route template, never a raw path
    aigw_http_request_seconds{method,route}
    aigw_webhook_deliveries_pending                   computed at scrape time (one indexed query)
    aigw_webhook_oldest_pending_seconds
    aigw_usage_stream_entries                          usage events not yet ingested (all streams)
    aigw_usage_stream_pending                          read by an ingester, not yet acknowledged
    aigw_usage_ingest_lag_seconds                      age of the oldest event not yet ingested
    aigw_metrics_source_up{source=postgres|redis}      0 when a scrape-time query failed

No label carries an account, a key or a model. Under `aigw up` the directory of
`$PROMETHEUS_MULTIPROC_DIR` holds the extproc workers' metrics too, and this endpoint serves
their sum with the control plane's own (`extproc.metrics`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, Metric
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw import keyspace
from aigw.metrics_registry import scrape_registry
from aigw.redis_client import REDIS_ERRORS
from controlplane.context import Context

SCRAPE_TIMEOUT: Final = 2.0
_UNMATCHED: Final = "<unmatched>"
_METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_HTTP_REQUESTS: Final = Counter(
    "aigw_http_requests", "Control-plane HTTP requests.", ["method", "route", "status"]
)
_HTTP_SECONDS: Final = Histogram(
    "aigw_http_request_seconds", "Control-plane HTTP request duration.", ["method", "route"]
)
_WEBHOOK_BACKLOG_SQL: Final = """
    SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
    FROM webhook_deliveries WHERE status = 'pending'
"""


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by its route template (`/v1/sub-accounts/{id}`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or _UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "other"
            _HTTP_REQUESTS.labels(method, template, str(status[0])).inc()
            _HTTP_SECONDS.labels(method, template).observe(time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class IngestLag:
    entries: int
    """Events in the streams: not yet ingested (the ingester deletes what it committed)."""
    pending: int
    """Of those, read by an ingester and not yet acknowledged."""
    oldest_age_s: float
    """Age of the oldest event still in a stream; 0 when every stream is empty."""


async def ingest_lag(
    redis: aioredis.Redis, streams: Sequence[str], group: str, now_ms: int
) -> IngestLag:
    """How far the usage ingester is behind, over every usage stream (one per shard): one
    pipelined round trip of XLEN, XPENDING and the first entry of each stream."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
            pipe.xpending(stream, group)
            pipe.xrange(stream, count=1)
        replies = await pipe.execute(raise_on_error=False)
    entries = pending = 0
    oldest_ms: int | None = None
    for length, summary, first in zip(replies[::3], replies[1::3], replies[2::3], strict=True):
        for reply in (length, first):
            if isinstance(reply, Exception):
                raise reply
        entries += int(length)
        if not isinstance(summary, ResponseError):  # NOGROUP: no ingester read it yet
            pending += int(summary["pending"])
        if first:
            first_ms = _id_ms(first[0][0])
            oldest_ms = first_ms if oldest_ms is None else min(oldest_ms, first_ms)
    age_s = 0.0 if oldest_ms is None else max(now_ms - oldest_ms, 0) / 1000
    return IngestLag(entries, pending, age_s)


def _id_ms(stream_id: bytes | str) -> int:
    """The epoch milliseconds a stream entry id (`<ms>-<seq>`) was added at."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.partition("-")[0])


async def _backlog_metrics(pool: asyncpg.Pool) -> list[Metric]:
    count, oldest = await pool.fetchrow(_WEBHOOK_BACKLOG_SQL)
    return [
        GaugeMetricFamily(
            "aigw_webhook_deliveries_pending", "Webhook deliveries waiting to be sent.", count
        ),
        GaugeMetricFamily(
            "aigw_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery waiting to be sent.",
            max(oldest or 0.0, 0.0),
        ),
    ]


async def _ingest_metrics(redis: aioredis.Redis) -> list[Metric]:
    lag = await ingest_lag(
        redis, keyspace.usage_streams(), keyspace.USAGE_CONSUMER_GROUP, time.time_ns() // 1_000_000
    )
    return [
        GaugeMetricFamily(
            "aigw_usage_stream_entries", "Usage events not yet ingested.", lag.entries
        ),
        GaugeMetricFamily(
            "aigw_usage_stream_pending", "Usage events read, not yet acknowledged.", lag.pending
        ),
        GaugeMetricFamily(
            "aigw_usage_ingest_lag_seconds",
            "Age of the oldest usage event not yet ingested.",
            lag.oldest_age_s,
        ),
    ]


class _Snapshot:
    """Gauges computed for one scrape, as a collector."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


async def scrape_time_metrics(ctx: Context) -> list[Metric]:
    """The webhook backlog and the ingest lag, each omitted (and its source marked down) when
    its store does not answer within `SCRAPE_TIMEOUT`."""
    up = GaugeMetricFamily(
        "aigw_metrics_source_up", "1 when a scrape-time query answered.", labels=["source"]
    )
    found: list[Metric] = []
    for source, query in (
        ("postgres", lambda: _backlog_metrics(ctx.pool)),
        ("redis", lambda: _ingest_metrics(ctx.redis)),
    ):
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                found += await query()
        except (TimeoutError, *REDIS_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError):
            up.add_metric([source], 0)
        else:
            up.add_metric([source], 1)
    return [*found, up]


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: the Prometheus text format."""
    ctx: Context = request.app.state.context
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(await scrape_time_metrics(ctx)))
    body = generate_latest(scrape_registry()) + generate_latest(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
