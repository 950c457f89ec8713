"""The control plane's FastAPI application: lifespan (pool, Redis, projection), routes, errors.

    create_app(config, database_url, redis_url) -> FastAPI

On start-up every key policy (and every not-ready spend) is projected to Redis from PostgreSQL
(then the `projected` marker is set); while running, a background task re-projects whenever Redis
loses the marker. A Redis that does not answer at start-up delays the projection (the data plane
fails closed meanwhile) but does not stop the control plane.

The usage ingester (`controlplane.ingester`) runs beside the API as a background task from the
same lifespan (`ingest=False` leaves it out); at shutdown it finishes its batch and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aigw.config import GatewayConfig
from aigw.redis_client import REDIS_ERRORS
from aigw.redis_client import connect as connect_redis
from controlplane import pg_pool, usage_routes, webhooks
from controlplane import provider_keys as provider_keys_routes
from controlplane.clock import Clock, utc_now
from controlplane.context import Context
from controlplane.dashboard import router as dashboard_router
from controlplane.dispatcher import Dispatcher
from controlplane.errors import install_error_handlers
from controlplane.health import install_health_routes
from controlplane.ingester import Ingester
from controlplane.metrics import HttpMetricsMiddleware, metrics_endpoint
from controlplane.projector import Projector
from controlplane.provider_key_service import ProviderKeyService
from controlplane.request_ids import RequestIdMiddleware
from controlplane.routes import router
from controlplane.webhook_secrets import secret_box

log = logging.getLogger(__name__)

INGESTER_STOP_TIMEOUT = 5.0
DISPATCHER_STOP_TIMEOUT = 10.0


def create_app(
    config: GatewayConfig,
    database_url: str,
    redis_url: str,
    *,
    clock: Clock = utc_now,
    reproject_interval: float = 1.0,
    ingest: bool = True,
) -> FastAPI:
    """The app; PostgreSQL must already be migrated (`controlplane.migrate.migrate`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await pg_pool.create_pool(database_url, max_size=10, command_timeout=30)
        redis = connect_redis(redis_url, socket_connect_timeout=5, socket_timeout=10)
        watcher: asyncio.Task[None] | None = None
        ingester: Ingester | None = None
        ingesting: asyncio.Task[None] | None = None
        dispatcher: Dispatcher | None = None
        dispatching: asyncio.Task[None] | None = None
        provider_keys: ProviderKeyService | None = None
        try:
            projector = Projector(pool, redis, clock)
            try:
                await projector.project_all()
            except REDIS_ERRORS as exc:
                log.warning("Redis does not answer (%s); key policies will be projected later", exc)
            app.state.context = Context(config, pool, redis, projector, clock)
            watcher = asyncio.create_task(projector.keep_projected(reproject_interval))
            provider_keys = await ProviderKeyService.start(
                config, pool, redis, clock, reproject_interval
            )
            app.state.provider_keys = provider_keys
            if ingest:
                ingester = Ingester(pool, redis, clock=clock)
                app.state.ingester = ingester
                ingesting = asyncio.create_task(ingester.run())
                dispatcher = Dispatcher(pool, secret_box(config), dsn=database_url)
                app.state.dispatcher = dispatcher
                dispatching = asyncio.create_task(dispatcher.run())
            yield
        finally:
            if dispatcher is not None and dispatching is not None:
                dispatcher.stop()
                try:
                    await asyncio.wait_for(dispatching, DISPATCHER_STOP_TIMEOUT)
                except TimeoutError:
                    log.warning("the webhook dispatcher did not stop in time; its leases run out")
            if ingester is not None and ingesting is not None:
                ingester.stop()
                try:
                    await asyncio.wait_for(ingesting, INGESTER_STOP_TIMEOUT)
                except TimeoutError:
                    log.warning("the usage ingester did not stop in time; its batch stays pending")
            if provider_keys is not None:
                await provider_keys.stop()
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
    app.include_router(webhooks.router)
    app.include_router(provider_keys_routes.router)
    app.include_router(usage_routes.router)
    app.include_router(dashboard_router)
    install_health_routes(app)
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
