"""Dashboard sessions, kept server-side in PostgreSQL (`dashboard_sessions`).

A parent signs in once with its key (`controlplane.dashboard.login`); the browser then holds only
a random session token (`secrets.token_urlsafe(32)`) in a cookie that is HttpOnly,
SameSite=Strict, limited to Path=/dashboard, and Secure when the page came over https. Nothing
else is kept in the browser: no key, no data in localStorage or sessionStorage.

The table stores only the token's SHA-256 (a stolen database yields no usable session) and the
hash of the parent key that signed in. Every request re-checks that key: a revoked or rotated
parent key ends its sessions at once. Sessions last 12 hours; logout deletes the row.

CSRF: the cookie is SameSite=Strict, so a cross-site page never sends it, and every change
(login, logout) is a POST; pages are read-only GETs. That is enough for this dashboard.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from fastapi import Request, Response

from controlplane import store
from controlplane.models import ParentAccount

COOKIE_NAME = "aigw_session"
COOKIE_PATH = "/dashboard"
LIFETIME = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Session:
    parent: ParentAccount
    expires_at: datetime


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def open_session(
    pool: asyncpg.Pool, parent_id: str, key_hash: str, now: datetime
) -> tuple[str, datetime]:
    """A new session for the parent that signed in with the key of `key_hash`; returns the
    plaintext token (for the cookie only) and its expiry. Expired sessions are swept here."""
    token = secrets.token_urlsafe(32)
    expires_at = now + LIFETIME
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM dashboard_sessions WHERE expires_at <= $1", now)
        await conn.execute(
            "INSERT INTO dashboard_sessions (token_hash, parent_id, key_hash, created_at,"
            " expires_at) VALUES ($1, $2, $3, $4, $5)",
            _token_hash(token),
            parent_id,
            key_hash,
            now,
            expires_at,
        )
    return token, expires_at


async def find_session(pool: asyncpg.Pool, token: str, now: datetime) -> Session | None:
    """The live session of this token: unexpired, its parent key still live; else None."""
    row = await pool.fetchrow(
        "SELECT parent_id, key_hash, expires_at FROM dashboard_sessions"
        " WHERE token_hash = $1 AND expires_at > $2",
        _token_hash(token),
        now,
    )
    if row is None:
        return None
    found = await store.find_key_and_parent(pool, row["key_hash"])
    if found is None or not found[0].live_at(now) or found[1].id != row["parent_id"]:
        return None
    return Session(found[1], row["expires_at"])


async def close_session(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute("DELETE FROM dashboard_sessions WHERE token_hash = $1", _token_hash(token))


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE_NAME) or None


def _over_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return (forwarded or request.url.scheme) == "https"


def set_session_cookie(
    response: Response, request: Request, token: str, expires_at: datetime
) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=int(LIFETIME.total_seconds()),
        expires=expires_at,
        path=COOKIE_PATH,
        secure=_over_https(request),
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE_NAME,
        path=COOKIE_PATH,
        secure=_over_https(request),
        httponly=True,
        samesite="strict",
    )
