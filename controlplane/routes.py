"""The REST routes of API.md §6 (sub-accounts, me, tiers): parse, authorise, call, answer."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import AfterValidator

from aigw.errors import invalid_request
from controlplane import store, subaccounts, views
from controlplane.auth import CallerDep, ParentDep
from controlplane.context import Context, ContextDep
from controlplane.errors import not_found
from controlplane.responses import ExactJSONResponse
from controlplane.schemas import (
    Account,
    RotateRequest,
    Status,
    SubAccountCreate,
    SubAccountFields,
    SubAccountList,
    SubAccountObject,
    SubAccountWithKey,
    TierList,
    clean_text,
)

router = APIRouter(prefix="/v1")
_SUB_ACCOUNT_ID = re.compile(r"^sa_[A-Za-z0-9]{1,64}$")

SubAccountId = Annotated[str, Path(description="A sub-account id, `sa_…`.")]
Tag = Annotated[
    str | None,
    Query(max_length=200),
    AfterValidator(lambda value: value if value is None else clean_text(value)),
]


def _answer(body: dict[str, Any], status_code: int = 200) -> ExactJSONResponse:
    """Money stays exact: a Response is not re-encoded by FastAPI (`controlplane.responses`)."""
    return ExactJSONResponse(body, status_code=status_code)


def _live(ctx: Context) -> dict[str, Any]:
    """What `views.sub_account` needs to read the live spend."""
    return {"pool": ctx.pool, "limits": ctx.projector.limits}


def _checked_id(sub_account_id: str) -> str:
    if not _SUB_ACCOUNT_ID.match(sub_account_id):
        raise not_found("sub-account", sub_account_id.encode("unicode_escape").decode()[:80])
    return sub_account_id


@router.post(
    "/sub-accounts",
    status_code=201,
    response_model=None,
    responses={201: {"model": SubAccountWithKey}},
    summary="Create a sub-account; the answer carries its key, shown only once",
)
async def create_sub_account(
    body: SubAccountCreate, parent: ParentDep, ctx: ContextDep
) -> ExactJSONResponse:
    sub, key = await subaccounts.create(ctx, parent.id, body.given())
    view = await views.sub_account(ctx.redis, sub, ctx.clock(), key=key, new=True)
    return _answer(view, 201)


@router.get(
    "/sub-accounts",
    response_model=None,
    responses={200: {"model": SubAccountList}},
    summary="List sub-accounts in creation order",
)
async def list_sub_accounts(
    parent: ParentDep,
    ctx: ContextDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=100)] = None,
    tag: Tag = None,
    status: Status | None = None,
) -> ExactJSONResponse:
    position = None
    if after is not None:
        if _SUB_ACCOUNT_ID.match(after):
            position = await store.position_of(ctx.pool, parent.id, after)
        if position is None:
            raise invalid_request("after: no sub-account with this id", param="after")
    subs, has_more = await store.list_sub_accounts(
        ctx.pool, parent.id, limit=limit, after=position, tag=tag, status=status
    )
    now = ctx.clock()
    data = [await views.sub_account(ctx.redis, sub, now, **_live(ctx)) for sub in subs]
    return _answer(views.listing(data, has_more))


@router.get(
    "/sub-accounts/{sub_account_id}",
    response_model=None,
    responses={200: {"model": SubAccountObject}},
    summary="One sub-account with its live spend",
)
async def get_sub_account(
    sub_account_id: SubAccountId, parent: ParentDep, ctx: ContextDep
) -> ExactJSONResponse:
    sub = await subaccounts.get(ctx, parent.id, _checked_id(sub_account_id))
    return _answer(await views.sub_account(ctx.redis, sub, ctx.clock(), **_live(ctx)))


@router.patch(
    "/sub-accounts/{sub_account_id}",
    response_model=None,
    responses={200: {"model": SubAccountObject}},
    summary="Change exactly the given fields (a new tier also applies its defaults)",
)
async def update_sub_account(
    sub_account_id: SubAccountId, body: SubAccountFields, parent: ParentDep, ctx: ContextDep
) -> ExactJSONResponse:
    sub = await subaccounts.update(ctx, parent.id, _checked_id(sub_account_id), body.given())
    return _answer(await views.sub_account(ctx.redis, sub, ctx.clock(), **_live(ctx)))


@router.delete(
    "/sub-accounts/{sub_account_id}",
    response_model=None,
    responses={200: {"model": SubAccountObject}},
    summary="Disable a sub-account and revoke its keys; its history stays",
)
async def delete_sub_account(
    sub_account_id: SubAccountId, parent: ParentDep, ctx: ContextDep
) -> ExactJSONResponse:
    sub = await subaccounts.disable(ctx, parent.id, _checked_id(sub_account_id))
    return _answer(await views.sub_account(ctx.redis, sub, ctx.clock(), **_live(ctx)))


@router.post(
    "/sub-accounts/{sub_account_id}/rotate",
    response_model=None,
    responses={200: {"model": SubAccountWithKey}},
    summary="Issue a new key; the old one dies after grace_seconds",
)
async def rotate_key(
    sub_account_id: SubAccountId,
    parent: ParentDep,
    ctx: ContextDep,
    body: Annotated[RotateRequest | None, Body()] = None,
) -> ExactJSONResponse:
    grace = body.grace_seconds if body is not None else 0
    sub, key = await subaccounts.rotate(ctx, parent.id, _checked_id(sub_account_id), grace)
    view = await views.sub_account(ctx.redis, sub, ctx.clock(), key=key, **_live(ctx))
    return _answer(view)


@router.get(
    "/me",
    response_model=None,
    responses={200: {"model": SubAccountObject | Account}},
    summary="The calling key's own account: a sub-account with live spend, or the parent",
)
async def me(caller: CallerDep, ctx: ContextDep) -> ExactJSONResponse:
    if caller.sub_account is None:
        return _answer(views.account(caller.parent))
    return _answer(
        await views.sub_account(ctx.redis, caller.sub_account, ctx.clock(), **_live(ctx))
    )


@router.get(
    "/tiers",
    response_model=None,
    responses={200: {"model": TierList}},
    summary="The tiers of the configuration and their values",
)
async def list_tiers(parent: ParentDep, ctx: ContextDep) -> dict[str, Any]:
    tiers = [views.tier(name, values) for name, values in ctx.config.tiers.items()]
    return views.listing(tiers, False)
