"""Health, readiness and shutdown as a load balancer or Kubernetes sees them: the control
plane's `/livez` and `/readyz` (on the running gateway, and with Redis gone or the projection not
done), extproc's standard gRPC health service (SERVING while it runs, NOT_SERVING once it stops),
and a SIGTERM'd extproc finishing the stream it has while refusing new ones."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub
from google.protobuf.wrappers_pb2 import Int32Value, StringValue

from aigw import keyspace
from aigw.embedded import free_port
from aigw.keys import generate_key
from controlplane.app import create_app
from extproc.health import EXT_PROC_SERVICE, SERVICE, Health, probe
from tests.e2e.conftest import E2E
from tests.integration.test_controlplane_subaccounts import CONFIG
from tests.unit.test_extproc_processor import POLICY, bearer, request_body, request_headers
from tests.unit.test_extproc_processor import store_policy as store_key_policy

START_TIMEOUT_S = 30.0


def _controlplane_url(e2e: E2E) -> str:
    return f"http://127.0.0.1:{e2e.gateway.config['server']['controlplane_port']}"


def _extproc_address(e2e: E2E) -> str:
    return f"127.0.0.1:{e2e.gateway.config['server']['extproc_port']}"


def test_running_control_plane_is_live_and_ready(e2e: E2E) -> None:
    live = httpx.get(f"{_controlplane_url(e2e)}/livez")
    ready = httpx.get(f"{_controlplane_url(e2e)}/readyz")

    assert live.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "redis": "ok", "projection": "ok"},
    }


def test_probes_are_not_on_the_public_base_url(e2e: E2E) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{e2e.gateway.url}{path}").status_code == 404


def test_running_extproc_answers_grpc_health_checks(e2e: E2E) -> None:
    assert probe(_extproc_address(e2e))
    with grpc.insecure_channel(_extproc_address(e2e)) as channel:
        check = channel.unary_unary(
            f"/{SERVICE}/Check",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=Int32Value.FromString,
        )
        assert check(StringValue(value=EXT_PROC_SERVICE), timeout=5).value == 1
        with pytest.raises(grpc.RpcError) as unknown:
            check(StringValue(value="no.such.Service"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stopping_extproc_reports_not_serving() -> None:
    health = Health()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((health.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        assert await asyncio.to_thread(probe, f"127.0.0.1:{port}")
        health.serving = False
        assert not await asyncio.to_thread(probe, f"127.0.0.1:{port}")
    finally:
        await server.stop(0)


def test_nothing_listening_is_not_serving() -> None:
    assert not probe(f"127.0.0.1:{free_port()}", timeout=1)


@pytest.fixture
async def dead_redis_plane(pg_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(CONFIG, pg_dsn, f"redis://127.0.0.1:{free_port()}/0", ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            yield client


async def test_without_redis_the_control_plane_is_live_but_not_ready(
    dead_redis_plane: httpx.AsyncClient,
) -> None:
    live = await dead_redis_plane.get("/livez")
    ready = await dead_redis_plane.get("/readyz")

    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "postgres": "ok",
        "redis": "unavailable",
        "projection": "unknown",
    }


async def test_not_ready_until_the_policies_are_projected(pg_dsn: str, redis_url: str) -> None:
    app = create_app(CONFIG, pg_dsn, redis_url, ingest=False, reproject_interval=3600)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            assert (await client.get("/readyz")).status_code == 200
            redis = aioredis.from_url(redis_url)
            try:
                await redis.delete(keyspace.PROJECTED_MARKER)
            finally:
                await redis.aclose()
            ready = await client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["checks"]["projection"] == "pending"


async def _wait_for(ready: bool, address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while await asyncio.to_thread(probe, address, 1.0) != ready:
        assert process.poll() is None or not ready, f"extproc exited with {process.returncode}"
        assert time.monotonic() < deadline, f"extproc health never became {ready}"
        await asyncio.sleep(0.05)


def _start_extproc(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "AIGW_CONFIG_JSON"}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "extproc", "--config", str(config), "--shutdown-grace", "20"],
            stdout=log,
            stderr=log,
            env=env,
        )


async def test_sigterm_lets_the_open_stream_finish_and_refuses_new_ones(
    tmp_path: Path, redis_url: str
) -> None:
    key = generate_key()
    await store_key_policy(redis_url, key, POLICY)
    redis = aioredis.from_url(redis_url)
    try:
        await redis.set(keyspace.BYOK_PROJECTED_MARKER, "2026-11-27T10:00:00Z")
    finally:
        await redis.aclose()
    address = f"127.0.0.1:{free_port()}"
    config = {
        "server": {"host": "127.0.0.1", "extproc_port": int(address.rpartition(":")[2])},
        "redis_url": redis_url,
        "data_dir": str(tmp_path / "data"),
        "providers": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test"}},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    process = _start_extproc(tmp_path / "gateway.yaml", tmp_path / "extproc.log")
    channel = grpc.aio.insecure_channel(address)
    try:
        await _wait_for(True, address, process)
        stub = ExternalProcessorStub(channel)
        open_stream = stub.Process()
        await open_stream.write(request_headers("POST", "/v1/chat/completions", bearer(key)))
        assert (await open_stream.read()).WhichOneof("response") == "request_headers"

        process.send_signal(signal.SIGTERM)
        await _wait_for(False, address, process)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Process(iter([request_headers("GET", "/v1/models", bearer(key))])).read()
        await open_stream.write(request_body({"model": "openai/gpt-5.4-mini", "messages": []}))
        finished = await open_stream.read()
        await open_stream.done_writing()
        exit_code = await asyncio.to_thread(process.wait, START_TIMEOUT_S)
    finally:
        await channel.close(grace=0)
        if process.poll() is None:
            process.kill()
            process.wait()

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert finished.WhichOneof("response") == "request_body"
    assert exit_code == 0
    assert "extproc stopping" in (tmp_path / "extproc.log").read_text()
