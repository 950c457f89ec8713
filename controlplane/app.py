"""The control plane's FastAPI application: lifespan (pool, Redis, projection), routes, errors.

    create_app(config, database_url, redis_url) -> FastAPI

On start-up every key policy is projected to Redis from PostgreSQL (then the `projected` marker
is set); while running, a background task re-projects whenever Redis loses the marker. A Redis
that does not answer at start-up delays the projection (the data plane fails closed meanwhile)
but does not stop the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from aigw.config import GatewayConfig
from controlplane.clock import Clock, utc_now
from controlplane.context import Context, ContextDep
from controlplane.errors import install_error_handlers
from controlplane.projector import Projector
from controlplane.routes import router

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0


def create_app(
    config: GatewayConfig,
    database_url: str,
    redis_url: str,
    *,
    clock: Clock = utc_now,
    reproject_interval: float = 1.0,
) -> FastAPI:
    """The app; PostgreSQL must already be migrated (`controlplane.migrate.migrate`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10, command_timeout=30)
        redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=10)
        watcher: asyncio.Task[None] | None = None
        try:
            projector = Projector(pool, redis, clock)
            try:
                await projector.project_all()
            except (RedisError, OSError) as exc:
                log.warning("Redis does not answer (%s); key policies will be projected later", exc)
            app.state.context = Context(config, pool, redis, projector, clock)
            watcher = asyncio.create_task(projector.keep_projected(reproject_interval))
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await redis.aclose()
            await pool.close()

    app = FastAPI(
        title="aigw control plane",
        summary="Parent accounts manage their sub-accounts, keys, budgets and limits.",
        version="0.1.0",
        openapi_url="/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(router)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    return app


async def healthz(ctx: ContextDep) -> JSONResponse:
    """200 when PostgreSQL and Redis both answer, else 503."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await ctx.pool.fetchval("SELECT 1")
            await ctx.redis.ping()
    except (TimeoutError, OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})
