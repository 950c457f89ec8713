"""The webhook routes of API.md §6: endpoints, their delivery log, test events.

    app.include_router(controlplane.webhooks.router)

Parent keys only; another parent's endpoint (or a deleted one) answers 404. The secret is
returned once, by POST, and stored sealed (`controlplane.webhook_secrets`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from aigw.errors import invalid_request
from aigw.keys import new_id
from controlplane import store, webhook_events
from controlplane import webhook_store as hooks
from controlplane.auth import ParentDep
from controlplane.clock import iso_z
from controlplane.context import ContextDep
from controlplane.errors import not_found
from controlplane.responses import ExactJSONResponse
from controlplane.webhook_schemas import (
    DeliveryList,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookObject,
    WebhookTest,
    WebhookWithSecret,
)
from controlplane.webhook_secrets import generate_secret, secret_box

router = APIRouter(prefix="/v1", tags=["webhooks"])

MAX_ENDPOINTS_PER_PARENT = 50
_ENDPOINT_ID = re.compile(r"^wh_[A-Za-z0-9]{1,64}$")
_ATTEMPT_ID = re.compile(r"^whd_[A-Za-z0-9]{1,64}$")

WebhookId = Annotated[str, Path(description="A webhook endpoint id, `wh_…`.")]
Limit = Annotated[int, Query(ge=1, le=100)]
After = Annotated[str | None, Query(max_length=100)]


def endpoint_view(endpoint: hooks.Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "events": list(endpoint.events),
        "description": endpoint.description,
        "created_at": iso_z(endpoint.created_at),
    }


def attempt_view(attempt: hooks.Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "object": "webhook_delivery",
        "event_id": attempt.event_id,
        "type": attempt.event_type,
        "attempt": attempt.attempt,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "outcome": attempt.outcome,
        "duration_ms": attempt.duration_ms,
        "created_at": iso_z(attempt.created_at),
    }


def _listing(data: list[dict[str, Any]], has_more: bool) -> ExactJSONResponse:
    return ExactJSONResponse({"object": "list", "data": data, "has_more": has_more})


async def _endpoint(ctx: ContextDep, parent_id: str, endpoint_id: str) -> hooks.Endpoint:
    endpoint = None
    if _ENDPOINT_ID.match(endpoint_id):
        endpoint = await hooks.get_endpoint(ctx.pool, parent_id, endpoint_id)
    if endpoint is None:
        raise not_found("webhook", endpoint_id.encode("unicode_escape").decode()[:80])
    return endpoint


@router.post(
    "/webhooks",
    status_code=201,
    response_model=None,
    responses={201: {"model": WebhookWithSecret}},
    summary="Register an endpoint; the answer carries its signing secret, shown only once",
)
async def create_webhook(body: WebhookCreate, parent: ParentDep, ctx: ContextDep) -> Any:
    endpoint_id = new_id("wh")
    secret = generate_secret()
    sealed = secret_box(ctx.config).seal(secret, endpoint_id)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await store.get_parent(conn, parent.id, for_update=True)  # serialises the count
        if await hooks.count_endpoints(conn, parent.id) >= MAX_ENDPOINTS_PER_PARENT:
            raise invalid_request(
                f"url: at most {MAX_ENDPOINTS_PER_PARENT} webhook endpoints per account;"
                " delete one first",
                param="url",
            )
        endpoint = await hooks.insert_endpoint(
            conn, endpoint_id, parent.id, body.url, body.events, body.description, sealed,
            ctx.clock(),
        )  # fmt: skip
    return ExactJSONResponse(endpoint_view(endpoint) | {"secret": secret}, status_code=201)


@router.get(
    "/webhooks",
    response_model=None,
    responses={200: {"model": WebhookList}},
    summary="List endpoints in creation order (without secrets)",
)
async def list_webhooks(
    parent: ParentDep, ctx: ContextDep, limit: Limit = 20, after: After = None
) -> Any:
    position = None
    if after is not None:
        endpoint = None
        if _ENDPOINT_ID.match(after):
            endpoint = await hooks.get_endpoint(ctx.pool, parent.id, after)
        if endpoint is None:
            raise invalid_request("after: no webhook endpoint with this id", param="after")
        position = (endpoint.created_at, endpoint.id)
    endpoints, has_more = await hooks.list_endpoints(
        ctx.pool, parent.id, limit=limit, after=position
    )
    return _listing([endpoint_view(endpoint) for endpoint in endpoints], has_more)


@router.get(
    "/webhooks/{webhook_id}",
    response_model=None,
    responses={200: {"model": WebhookObject}},
    summary="One endpoint (without its secret)",
)
async def get_webhook(webhook_id: WebhookId, parent: ParentDep, ctx: ContextDep) -> Any:
    return ExactJSONResponse(endpoint_view(await _endpoint(ctx, parent.id, webhook_id)))


@router.delete(
    "/webhooks/{webhook_id}",
    response_model=None,
    responses={200: {"model": WebhookDeleted}},
    summary="Remove an endpoint; its pending deliveries are cancelled",
)
async def delete_webhook(webhook_id: WebhookId, parent: ParentDep, ctx: ContextDep) -> Any:
    deleted = False
    if _ENDPOINT_ID.match(webhook_id):
        async with ctx.pool.acquire() as conn, conn.transaction():
            deleted = await hooks.delete_endpoint(conn, parent.id, webhook_id, ctx.clock())
    if not deleted:
        raise not_found("webhook", webhook_id.encode("unicode_escape").decode()[:80])
    return ExactJSONResponse({"id": webhook_id, "object": "webhook_endpoint", "deleted": True})


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=None,
    responses={200: {"model": DeliveryList}},
    summary="The endpoint's delivery attempts, newest first",
)
async def list_deliveries(
    webhook_id: WebhookId,
    parent: ParentDep,
    ctx: ContextDep,
    limit: Limit = 20,
    after: After = None,
) -> Any:
    endpoint = await _endpoint(ctx, parent.id, webhook_id)
    position = None
    if after is not None:
        if _ATTEMPT_ID.match(after):
            position = await hooks.attempt_position(ctx.pool, endpoint.id, after)
        if position is None:
            raise invalid_request("after: no delivery attempt with this id", param="after")
    attempts, has_more = await hooks.list_attempts(
        ctx.pool, endpoint.id, limit=limit, after=position
    )
    return _listing([attempt_view(attempt) for attempt in attempts], has_more)


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=None,
    responses={202: {"model": WebhookTest}},
    summary="Send a `webhook.test` event to this endpoint (its attempts show in deliveries)",
)
async def test_webhook(webhook_id: WebhookId, parent: ParentDep, ctx: ContextDep) -> Any:
    endpoint = await _endpoint(ctx, parent.id, webhook_id)
    async with ctx.pool.acquire() as conn, conn.transaction():
        event_id = await webhook_events.webhook_test(conn, parent.id, endpoint.id, ctx.clock())
    body = {"id": event_id, "object": "event", "type": "webhook.test", "webhook_id": endpoint.id}
    return ExactJSONResponse(body, status_code=202)
