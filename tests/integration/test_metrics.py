"""Prometheus metrics as an operator scrapes them: the control plane's `/metrics` (HTTP requests
by route template, the webhook backlog and the usage ingest lag, against real PostgreSQL and
Redis) and extproc's decision counters over a real gRPC stream (admitted, each kind of refusal,
a Redis failure). Counters are process-wide, so each test compares before and after."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from aigw import keyspace
from aigw.embedded import free_port
from aigw.keys import generate_key
from controlplane.accounts import create_parent_account
from controlplane.app import create_app
from extproc.gateway import Gateway
from extproc.limits import LimitStore
from extproc.policies import PolicyStore
from extproc.server import create_server
from tests.integration.test_controlplane_subaccounts import CONFIG as CP_CONFIG
from tests.integration.test_extproc_server import answers_and_status
from tests.unit.test_extproc_processor import (
    CONFIG,
    POLICY,
    bearer,
    request_body,
    request_headers,
    running_gateway,
    store_policy,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition text: (name, sorted labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def extproc_samples() -> Samples:
    return {
        (name, labels): value
        for (name, labels), value in _registry_samples().items()
        if name.startswith(("aigw_requests", "aigw_admission", "aigw_redis"))
    }


def _registry_samples() -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
    }


def decisions(before: Samples, after: Samples) -> dict[str, float]:
    """How many requests each decision gained between two snapshots."""
    gained = {}
    for (name, labels), value in after.items():
        if name == "aigw_requests_total":
            change = value - before.get((name, labels), 0.0)
            if change:
                gained[dict(labels)["decision"]] = change
    return gained


def gained(before: Samples, after: Samples, name: str) -> float:
    return after.get((name, ()), 0.0) - before.get((name, ()), 0.0)


@pytest.fixture
async def control_plane(pg_dsn: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(CP_CONFIG, pg_dsn, redis_url, ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield client


async def test_http_requests_are_counted_by_route_template(
    control_plane: httpx.AsyncClient, pg_dsn: str, redis_url: str
) -> None:
    _, key = await create_parent_account(pg_dsn, "acme", redis_url)
    headers = {"Authorization": f"Bearer {key}"}
    route = (
        ("method", "GET"),
        ("route", "/v1/sub-accounts/{sub_account_id}"),
        ("status", "404"),
    )
    before = samples((await control_plane.get("/metrics")).text)

    for unknown in ("sa_doesnotexist1", "sa_doesnotexist2"):
        response = await control_plane.get(f"/v1/sub-accounts/{unknown}", headers=headers)
        assert response.status_code == 404
    scrape = await control_plane.get("/metrics")

    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    after = samples(scrape.text)
    assert (
        after[("aigw_http_requests_total", route)]
        - before.get(("aigw_http_requests_total", route), 0.0)
        == 2
    )
    assert "sa_doesnotexist" not in scrape.text
    assert key not in scrape.text


async def test_webhook_backlog_and_ingest_lag_are_computed_at_scrape_time(
    control_plane: httpx.AsyncClient, pg_dsn: str, redis_url: str
) -> None:
    parent_id, _ = await create_parent_account(pg_dsn, "acme", redis_url)
    queued_at = datetime.now(UTC) - timedelta(seconds=30)
    await _queue_deliveries(pg_dsn, parent_id, queued_at, pending=3, delivered=2)
    redis = aioredis.from_url(redis_url)
    try:
        ten_seconds_ago = int(datetime.now(UTC).timestamp() * 1000) - 10_000
        streams = keyspace.usage_streams()
        group = keyspace.USAGE_CONSUMER_GROUP
        await redis.xadd(streams[0], {"e": b"{}"}, id=f"{ten_seconds_ago}-0")
        await redis.xadd(streams[-1], {"e": b"{}"}, id=f"{ten_seconds_ago + 5000}-0")
        await redis.xadd(streams[-1], {"e": b"{}"}, id=f"{ten_seconds_ago + 6000}-0")
        await redis.xgroup_create(streams[-1], group, id="0")
        await redis.xreadgroup(group, "test-ingester", {streams[-1]: ">"}, count=1)
    finally:
        await redis.aclose()

    scraped = samples((await control_plane.get("/metrics")).text)

    assert scraped[("aigw_webhook_deliveries_pending", ())] == 3
    assert 30 <= scraped[("aigw_webhook_oldest_pending_seconds", ())] < 120
    assert scraped[("aigw_usage_stream_entries", ())] == 3
    assert scraped[("aigw_usage_stream_pending", ())] == 1
    assert 10 <= scraped[("aigw_usage_ingest_lag_seconds", ())] < 100
    assert scraped[("aigw_metrics_source_up", (("source", "postgres"),))] == 1
    assert scraped[("aigw_metrics_source_up", (("source", "redis"),))] == 1


async def test_empty_streams_mean_no_lag(control_plane: httpx.AsyncClient) -> None:
    scraped = samples((await control_plane.get("/metrics")).text)

    assert scraped[("aigw_usage_stream_entries", ())] == 0
    assert scraped[("aigw_usage_ingest_lag_seconds", ())] == 0
    assert scraped[("aigw_webhook_deliveries_pending", ())] == 0


async def test_a_scrape_with_redis_down_still_answers_and_says_so(pg_dsn: str) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(CP_CONFIG, pg_dsn, dead_redis, ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            scrape = await client.get("/metrics")

    assert scrape.status_code == 200
    scraped = samples(scrape.text)
    assert scraped[("aigw_metrics_source_up", (("source", "redis"),))] == 0
    assert scraped[("aigw_metrics_source_up", (("source", "postgres"),))] == 1
    assert ("aigw_usage_stream_entries", ()) not in scraped
    assert ("aigw_webhook_deliveries_pending", ()) in scraped


async def _queue_deliveries(
    dsn: str, parent_id: str, created_at: datetime, *, pending: int, delivered: int
) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO webhook_endpoints (id, parent_id, url, events, secret, created_at)"
            " VALUES ('wh_metrics', $1, 'http://127.0.0.1:9/hook', '{*}', 'sealed', $2)",
            parent_id,
            created_at,
        )
        statuses = ["pending"] * pending + ["delivered"] * delivered
        for number, status in enumerate(statuses):
            await connection.execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, status,"
                " next_attempt_at, created_at) VALUES ('wh_metrics', $1, 'webhook.test', $2,"
                " $3, $3)",
                f"evt_{number}",
                status,
                created_at,
            )
    finally:
        await connection.close()


async def _process(stub: ExternalProcessorStub, messages: Iterable[ProcessingRequest]) -> None:
    responses, _ = await answers_and_status(stub, list(messages))
    assert responses


@pytest.fixture
async def stub(redis_url: str) -> AsyncIterator[ExternalProcessorStub]:
    async with running_gateway(redis_url) as gateway, _serving(gateway) as served:
        yield served


class _serving:
    """An extproc gRPC server for `gateway` on a free port, and a client stub for it."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __aenter__(self) -> ExternalProcessorStub:
        self._server, port = create_server(self._gateway, "127.0.0.1:0", 1024 * 1024)
        await self._server.start()
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return ExternalProcessorStub(self._channel)

    async def __aexit__(self, *_: object) -> None:
        await asyncio.wait_for(self._channel.close(grace=0), 5)
        await asyncio.wait_for(self._server.stop(0), 5)


async def test_extproc_counts_one_decision_per_request(
    stub: ExternalProcessorStub, redis_url: str
) -> None:
    key = generate_key()
    await store_policy(redis_url, key, POLICY)
    chat = "/v1/chat/completions"
    before = extproc_samples()

    for _ in range(3):
        await _process(
            stub,
            [
                request_headers("POST", chat, bearer(key)),
                request_body({"model": "openai/gpt-5.4-mini", "messages": []}),
            ],
        )
    await _process(stub, [request_headers("POST", chat, bearer(generate_key()))])
    await _process(stub, [request_headers("POST", chat, {})])
    await _process(
        stub,
        [
            request_headers("POST", chat, bearer(key)),
            request_body({"model": "google/gemini-2.5-flash", "messages": []}),
        ],
    )
    await _process(
        stub, [request_headers("POST", chat, bearer(key)), request_body({"messages": []})]
    )
    await _process(stub, [request_headers("GET", "/v1/models", bearer(key), end_of_stream=True)])
    after = extproc_samples()

    assert decisions(before, after) == {
        "admitted": 3,
        "rejected_auth": 2,
        "rejected_model": 1,
        "invalid": 1,
        "answered": 1,
    }
    assert gained(before, after, "aigw_admission_seconds_count") == 8
    assert gained(before, after, "aigw_redis_errors_total") == 0


async def test_extproc_counts_a_redis_failure_as_unavailable(redis_url: str) -> None:
    key = generate_key()
    await store_policy(redis_url, key, dataclasses.replace(POLICY, rate_limit_rpm=100))
    policies = PolicyStore(redis_url)
    policies.start()
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    gateway = Gateway.from_config(CONFIG, policies, LimitStore(dead))
    before = extproc_samples()
    try:
        async with _serving(gateway) as stub:
            await _process(
                stub,
                [
                    request_headers("POST", "/v1/chat/completions", bearer(key)),
                    request_body({"model": "openai/gpt-5.4-mini", "messages": []}),
                ],
            )
    finally:
        await policies.close()
        await dead.aclose()
    after = extproc_samples()

    assert decisions(before, after) == {"unavailable": 1}
    assert gained(before, after, "aigw_redis_errors_total") == 1
