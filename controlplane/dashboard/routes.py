"""The dashboard's routes under `/dashboard` (server-rendered HTML, not part of the OpenAPI
document): sign-in and sign-out, the overview, sub-accounts, the request log, static files.

Every page needs a live session (`controlplane.dashboard.sessions`); without one it redirects to
the sign-in page, which brings the user back afterwards. Sign-in and sign-out are the only POSTs.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from controlplane.context import ContextDep
from controlplane.dashboard import pages, sessions
from controlplane.dashboard.filters import LogQuery
from controlplane.dashboard.login import LoginRefused, check_parent_key
from controlplane.dashboard.render import PACKAGE_DIR, page
from controlplane.usage_queries import UnknownCursor

router = APIRouter(prefix="/dashboard", include_in_schema=False)

HOME = "/dashboard"
LOGIN = "/dashboard/login"
STATIC_FILES = {
    "app.css": "text/css",
    "dashboard.js": "text/javascript",
    "vendor/chart.umd.min.js": "text/javascript",
}
STATIC_CACHE = "public, max-age=3600"


def _safe_next(target: str | None) -> str:
    """Where to go after sign-in: a dashboard path only (never another site)."""
    if target and target.startswith(HOME) and not target.startswith("//") and "\\" not in target:
        return target
    return HOME


def _to_login(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?{urlencode({'next': here})}", status_code=303)


async def _session(request: Request, ctx: ContextDep) -> sessions.Session | None:
    token = sessions.session_token(request)
    if token is None:
        return None
    return await sessions.find_session(ctx.pool, token, ctx.clock())


def _signed_in_page(
    request: Request,
    session: sessions.Session,
    template: str,
    section: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    frame = {"parent": session.parent, "section": section}
    return page(request, template, frame | context, status_code)


@router.get("/login")
async def login_form(request: Request, ctx: ContextDep, next: str | None = None) -> Response:
    if await _session(request, ctx) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return page(request, "login.html", {"error": None, "next": _safe_next(next)})


@router.post("/login")
async def login(
    request: Request,
    ctx: ContextDep,
    key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = HOME,
) -> Response:
    try:
        signed_in = await check_parent_key(ctx, key)
    except LoginRefused as refused:
        context = {"error": str(refused), "next": _safe_next(next)}
        return page(request, "login.html", context, status_code=401)
    token, expires_at = await sessions.open_session(
        ctx.pool, signed_in.parent.id, signed_in.key_hash, ctx.clock()
    )
    response = RedirectResponse(_safe_next(next), status_code=303)
    sessions.set_session_cookie(response, request, token, expires_at)
    return response


@router.post("/logout")
async def logout(request: Request, ctx: ContextDep) -> Response:
    token = sessions.session_token(request)
    if token is not None:
        await sessions.close_session(ctx.pool, token)
    response = RedirectResponse(LOGIN, status_code=303)
    sessions.clear_session_cookie(response, request)
    return response


@router.get("")
async def overview(request: Request, ctx: ContextDep, month: str | None = None) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return _to_login(request)
    context = await pages.overview(ctx, session.parent, month)
    return _signed_in_page(request, session, "overview.html", "overview", context)


@router.get("/sub-accounts")
async def sub_accounts(request: Request, ctx: ContextDep) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return _to_login(request)
    context = await pages.sub_account_list(ctx, session.parent)
    return _signed_in_page(request, session, "sub_accounts.html", "sub-accounts", context)


@router.get("/sub-accounts/{sub_account_id}")
async def sub_account(request: Request, ctx: ContextDep, sub_account_id: str) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return _to_login(request)
    context = await pages.sub_account_page(ctx, session.parent, sub_account_id)
    if context is None:
        missing = {"what": "sub-account", "back": f"{HOME}/sub-accounts"}
        return _signed_in_page(request, session, "not_found.html", "sub-accounts", missing, 404)
    return _signed_in_page(request, session, "sub_account.html", "sub-accounts", context)


@router.get("/requests")
async def requests(request: Request, ctx: ContextDep) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return _to_login(request)
    query = LogQuery.from_params(request.query_params)
    try:
        context = await pages.request_log_page(ctx, session.parent, query)
    except UnknownCursor:
        return RedirectResponse(f"{HOME}/requests?{urlencode(query.params(after=None))}", 303)
    return _signed_in_page(request, session, "requests.html", "requests", context)


@router.get("/static/{name:path}")
async def static_file(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return PlainTextResponse("Not found", status_code=404)
    headers = {"Cache-Control": STATIC_CACHE, "X-Content-Type-Options": "nosniff"}
    return FileResponse(PACKAGE_DIR / "static" / name, media_type=media_type, headers=headers)
