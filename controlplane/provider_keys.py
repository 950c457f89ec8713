"""The REST routes of BYOK provider keys (API.md §6 "BYOK provider keys"), parent keys only.

    PUT    /v1/provider-keys/{provider}   {"api_key": "..."} → the key, masked
    GET    /v1/provider-keys              list, masked to the last 4 characters
    DELETE /v1/provider-keys/{provider}   detach

A key is never returned, logged or echoed in an error: answers show `masked_key`
(`****` + its last 4 characters) only. An unknown provider (not under `providers:` of the
configuration) answers 404; an empty key 400 naming `api_key`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from aigw.errors import GatewayError
from controlplane.auth import ParentDep
from controlplane.clock import iso_z
from controlplane.context import ContextDep
from controlplane.provider_key_service import ProviderKeyService
from controlplane.provider_key_store import ProviderKeyRow
from controlplane.responses import ExactJSONResponse

router = APIRouter(prefix="/v1", tags=["provider keys"])

MAX_KEY_LENGTH = 4096
_PRINTABLE = frozenset(chr(code) for code in range(0x21, 0x7F))

ProviderName = Annotated[
    str, Path(max_length=100, description="A provider of the configuration, e.g. `openai`.")
]


class ProviderKeyPut(BaseModel):
    """The parent's own key for the provider; surrounding whitespace is ignored."""

    model_config = ConfigDict(extra="forbid")

    api_key: StrictStr

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise PydanticCustomError("key_empty", "must not be empty")
        if len(value) > MAX_KEY_LENGTH:
            raise PydanticCustomError("key_long", f"must be at most {MAX_KEY_LENGTH} characters")
        if not _PRINTABLE.issuperset(value):
            raise PydanticCustomError(
                "key_chars", "must be printable ASCII without spaces (as provider keys are)"
            )
        return value


class ProviderKeyObject(BaseModel):
    object: Literal["provider_key"] = "provider_key"
    provider: str
    masked_key: str
    last4: str
    created_at: str
    updated_at: str


class ProviderKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProviderKeyObject]
    has_more: bool


class ProviderKeyDeleted(BaseModel):
    object: Literal["provider_key"] = "provider_key"
    provider: str
    deleted: bool


async def get_provider_keys(request: Request) -> ProviderKeyService:
    """The service the app's lifespan started (`app.state.provider_keys`); `async` so FastAPI
    does not run it in a worker thread."""
    service: ProviderKeyService = request.app.state.provider_keys
    return service


ProviderKeysDep = Annotated[ProviderKeyService, Depends(get_provider_keys)]


def view(row: ProviderKeyRow) -> dict[str, Any]:
    return {
        "object": "provider_key",
        "provider": row.provider,
        "masked_key": "****" + row.last4,
        "last4": row.last4,
        "created_at": iso_z(row.created_at),
        "updated_at": iso_z(row.updated_at),
    }


def _known(ctx: ContextDep, provider: str) -> str:
    if provider in ctx.config.providers:
        return provider
    shown = provider.encode("unicode_escape").decode()[:80]
    known = ", ".join(sorted(ctx.config.providers)) or "none"
    raise GatewayError(
        404,
        "not_found",
        "invalid_request_error",
        f"No provider '{shown}' on this gateway (configured: {known}).",
        param="provider",
    )


@router.put(
    "/provider-keys/{provider}",
    response_model=None,
    responses={200: {"model": ProviderKeyObject}},
    summary="Attach (or replace) the parent's own key for a provider",
)
async def put_provider_key(
    provider: ProviderName,
    body: ProviderKeyPut,
    parent: ParentDep,
    ctx: ContextDep,
    keys: ProviderKeysDep,
) -> ExactJSONResponse:
    row = await keys.attach(parent.id, _known(ctx, provider), body.api_key)
    return ExactJSONResponse(view(row))


@router.get(
    "/provider-keys",
    response_model=None,
    responses={200: {"model": ProviderKeyList}},
    summary="List the parent's provider keys, masked to their last 4 characters",
)
async def list_provider_keys(parent: ParentDep, keys: ProviderKeysDep) -> ExactJSONResponse:
    rows = await keys.list(parent.id)
    return ExactJSONResponse({"object": "list", "data": [view(r) for r in rows], "has_more": False})


@router.delete(
    "/provider-keys/{provider}",
    response_model=None,
    responses={200: {"model": ProviderKeyDeleted}},
    summary="Detach the parent's key for a provider (its traffic uses the platform key again)",
)
async def delete_provider_key(
    provider: ProviderName, parent: ParentDep, ctx: ContextDep, keys: ProviderKeysDep
) -> ExactJSONResponse:
    name = _known(ctx, provider)
    if not await keys.detach(parent.id, name):
        raise GatewayError(
            404,
            "not_found",
            "invalid_request_error",
            f"No provider key is attached for '{name}'.",
            param="provider",
        )
    return ExactJSONResponse({"object": "provider_key", "provider": name, "deleted": True})
