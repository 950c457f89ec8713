"""Who is calling: the key from `Authorization: Bearer` or `x-api-key`, checked against
PostgreSQL (the source of truth) with the same rules the data plane applies to its policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from aigw.errors import invalid_api_key
from aigw.keys import hash_key, looks_like_key
from controlplane import store
from controlplane.context import ContextDep
from controlplane.models import ParentAccount, SubAccount
from controlplane.projector import sub_account_policy


@dataclass(frozen=True, slots=True)
class Caller:
    parent: ParentAccount
    sub_account: SubAccount | None  # None when the parent's own key was used


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


async def authenticate(request: Request, ctx: ContextDep) -> Caller:
    key = presented_key(request)
    if key is None:
        raise invalid_api_key()
    if not looks_like_key(key):
        raise invalid_api_key("Invalid API key: aigw keys start with 'sk-aig-'.")
    now = ctx.clock()
    found = await store.find_key_and_parent(ctx.pool, hash_key(key))
    if found is None or not found[0].live_at(now):
        raise invalid_api_key("Invalid API key: unknown, revoked, expired or rotated out.")
    record, parent = found
    if record.sub_account_id is None:
        return Caller(parent, None)
    sub = await store.get_sub_account(ctx.pool, record.sub_account_id)
    if sub is None or not sub_account_policy(sub, record).usable_at(now.timestamp()):
        raise invalid_api_key("Invalid API key: this sub-account is disabled or expired.")
    return Caller(parent, sub)


async def parent_only(caller: Annotated[Caller, Depends(authenticate)]) -> ParentAccount:
    if caller.sub_account is not None:
        raise invalid_api_key(
            "This endpoint needs a parent account key; a sub-account key may call only "
            "GET /v1/me and the data plane."
        )
    return caller.parent


CallerDep = Annotated[Caller, Depends(authenticate)]
ParentDep = Annotated[ParentAccount, Depends(parent_only)]
