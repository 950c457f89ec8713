"""What every request handler needs, opened once per process by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, Request

from aigw.config import GatewayConfig
from controlplane.clock import Clock
from controlplane.projector import Projector


@dataclass(frozen=True, slots=True)
class Context:
    config: GatewayConfig
    pool: asyncpg.Pool
    redis: aioredis.Redis
    projector: Projector
    clock: Clock


async def get_context(request: Request) -> Context:
    """The app's context. `async` although it awaits nothing: FastAPI runs a plain `def`
    dependency in a worker thread, a thread hand-off on every request."""
    context: Context = request.app.state.context
    return context


ContextDep = Annotated[Context, Depends(get_context)]
