"""Checking the key typed into the dashboard's login form.

The check is the API's own (`controlplane.auth.authenticate`): the key is presented to it exactly
as an API client would send it, so the dashboard accepts a key if and only if the REST API does.
On top of that only a parent key may sign in. The key itself goes no further than this module:
it is never stored, logged, put in a cookie or a URL, or echoed into a page.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from aigw.errors import GatewayError
from aigw.keys import hash_key
from controlplane.auth import authenticate
from controlplane.context import Context
from controlplane.models import ParentAccount

WRONG_KEY = "That key was not recognised. It may be mistyped, revoked or rotated out."
SUB_ACCOUNT_KEY = (
    "This is a sub-account key. The dashboard needs the parent account key "
    "(the one `aigw accounts create` or the first `aigw up` printed)."
)


@dataclass(frozen=True, slots=True)
class SignIn:
    """A successful check: the parent, and the hash of the key it signed in with."""

    parent: ParentAccount
    key_hash: str


class LoginRefused(Exception):
    """The key cannot sign in; the message is safe to show (it never contains the key)."""


async def check_parent_key(ctx: Context, typed_key: str) -> SignIn:
    key = typed_key.strip()
    if not key or not key.isascii() or not key.isprintable():
        raise LoginRefused(WRONG_KEY)
    presented = Request({"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]})
    try:
        caller = await authenticate(presented, ctx)
    except GatewayError:
        raise LoginRefused(WRONG_KEY) from None
    if caller.sub_account is not None:
        raise LoginRefused(SUB_ACCOUNT_KEY)
    return SignIn(caller.parent, hash_key(key))
