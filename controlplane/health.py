"""The control plane's health endpoints, for `aigw up`, load balancers and Kubernetes probes.

GET /livez    200 while the process serves HTTP (liveness: restart me if this fails)
GET /readyz   200 when PostgreSQL and Redis answer and every key policy and provider key
              has been projected to Redis (readiness: send me traffic); else 503 naming the
              check that failed
GET /healthz  200 when PostgreSQL and Redis answer (routed through Envoy: API.md §8)
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from aigw import keyspace
from aigw.redis_client import REDIS_ERRORS
from controlplane.context import ContextDep

HEALTH_TIMEOUT: Final = 2.0
_FAILURES: Final = (
    TimeoutError,
    *REDIS_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


async def livez() -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def healthz(ctx: ContextDep) -> JSONResponse:
    """200 when PostgreSQL and Redis both answer, else 503."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await ctx.pool.fetchval("SELECT 1")
            await ctx.redis.ping()
    except _FAILURES:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def readyz(ctx: ContextDep) -> JSONResponse:
    """Each check as `ok` or what is wrong; 200 only when all are `ok`."""
    checks = {"postgres": "unavailable", "redis": "unavailable", "projection": "unknown"}
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await ctx.pool.fetchval("SELECT 1")
            checks["postgres"] = "ok"
    except _FAILURES:
        pass
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            policies = await ctx.redis.exists(keyspace.PROJECTED_MARKER)
            provider_keys = await ctx.redis.exists(keyspace.BYOK_PROJECTED_MARKER)
            checks["redis"] = "ok"
            checks["projection"] = "ok" if policies and provider_keys else "pending"
    except _FAILURES:
        pass
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


def install_health_routes(app: FastAPI) -> None:
    for path, endpoint in (("/livez", livez), ("/readyz", readyz), ("/healthz", healthz)):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
