"""`LimitStore`: every Redis call of admission and settlement, one Lua script each.

Scripts are `.lua` files beside this module (`_windows.lua` is the prelude of `admit.lua` and
`settle.lua`), read with `importlib.resources` and registered once per store; each call is one
EVALSHA, and a NOSCRIPT answer (a restarted Redis) reloads the script and retries once. Calls that
arrive while another is in flight go to Redis together as one pipeline (`pipelining`). Keys come
from `aigw.keyspace`; scripts take only KEYS and ARGV. Every Redis failure is raised as
`LimitStoreUnavailable`, so the processor fails closed in one place. Every script's keys are of
one owner and its usage shard, so one Redis Cluster slot (`aigw.keyspace`).
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Any, Final

from aigw import keyspace
from aigw.redis_client import REDIS_ERRORS, AsyncRedis
from extproc.limits.pipelining import PipelinedScripts
from extproc.limits.types import (
    AdmitRequest,
    AdmitResult,
    LimitStoreUnavailable,
    RateFigures,
    Refusal,
    SettleRequest,
    SettleResult,
)

MINUTE_MS: Final = 60_000
DAY_MS: Final = 86_400_000
RPM_WINDOW_MS, RPM_BUCKET_MS = MINUTE_MS, 1_000
RPD_WINDOW_MS, RPD_BUCKET_MS = DAY_MS, 300_000
TPM_WINDOW_MS, TPM_BUCKET_MS = MINUTE_MS, 1_000
SPEND_RETENTION_MS: Final = 35 * DAY_MS
"""A period's spend hash outlives the period by this much (late settles, the control plane)."""
SETTLED_MARKER_TTL_MS: Final = 15 * MINUTE_MS
"""How long a second settle of the same request id is recognised and ignored: longer than a
reservation lives (route timeout + 60 s), over which a deferred settle may be retried."""

_CONSTANTS: Final = (
    f"local RPM_W, RPM_B = {RPM_WINDOW_MS}, {RPM_BUCKET_MS}\n"
    f"local RPD_W, RPD_B = {RPD_WINDOW_MS}, {RPD_BUCKET_MS}\n"
    f"local TPM_W, TPM_B = {TPM_WINDOW_MS}, {TPM_BUCKET_MS}\n"
)
_REFUSALS: Final[tuple[Refusal | None, ...]] = (None, "budget", "rpm", "rpd", "tpm", "not_ready")


def _source(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def _spend_ttl_ms(period_end_ms: int, now_ms: int) -> int:
    if not period_end_ms:
        return 0
    return max(period_end_ms - now_ms, 0) + SPEND_RETENTION_MS


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _seconds(ms: int) -> int:
    return -(-ms // 1000)


class LimitStore:
    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis
        prelude = _CONSTANTS + _source("_windows.lua")
        self._admit = redis.register_script(prelude + _source("admit.lua"))
        self._settle = redis.register_script(prelude + _source("settle.lua"))
        self._release = redis.register_script(_source("release.lua"))
        self._rebuild = redis.register_script(_source("rebuild.lua"))
        self._scripts = PipelinedScripts(redis)

    async def load(self) -> None:
        """Load every script now (optional: the first call of each would otherwise)."""
        for script in (self._admit, self._settle, self._release, self._rebuild):
            await self._call(self._redis.script_load, script.script)

    async def admit(self, req: AdmitRequest) -> AdmitResult:
        """Check every window and the cap, and count and reserve only if all of them pass."""
        owner, period = req.owner_id, req.period_id
        out = req.output_nanocents_per_token
        max_out = req.max_output_tokens
        min_out = min(req.min_output_tokens, max_out)
        cap = req.cap_microcents
        reply = await self._call(
            self._scripts.run,
            self._admit,
            (
                keyspace.owner_state(owner),
                keyspace.owner_spend(owner, period),
                keyspace.owner_reservations(owner, period),
                keyspace.owner_reservation_expiries(owner, period),
                keyspace.owner_window(owner, "rpm"),
                keyspace.owner_window(owner, "rpd"),
                keyspace.owner_window(owner, "tpm"),
                keyspace.owner_rate_limited_debounce(owner),
                keyspace.owner_usage_stream(owner),
            ),
            (
                req.now_ms,
                req.request_id,
                1 if req.require_ready else 0,
                -1 if cap is None else cap,
                req.input_microcents,
                out,
                max_out,
                min_out,
                req.input_microcents - (-max_out * out // 1000),
                req.input_microcents - (-min_out * out // 1000),
                req.now_ms + req.reservation_ttl_ms,
                _spend_ttl_ms(req.period_end_ms, req.now_ms),
                -1 if req.rpm is None else req.rpm,
                -1 if req.rpd is None else req.rpd,
                -1 if req.tpm is None else req.tpm,
                req.tpm_input_tokens,
                owner,
                req.parent_id or "",
                period,
            ),
        )
        rate: dict[str, RateFigures] = {}
        if reply[8] >= 0:
            rate["requests"] = (reply[8], reply[9], _seconds(reply[10]))
        if reply[11] >= 0:
            rate["tokens"] = (reply[11], reply[12], _seconds(reply[13]))
        refusal = _REFUSALS[reply[1]]
        return AdmitResult(
            admitted=reply[0] == 1,
            refusal=refusal,
            granted_output_tokens=reply[2],
            clamped=reply[3] == 1,
            reserved_microcents=reply[4],
            spent_microcents=reply[5],
            reserved_total_microcents=reply[6],
            retry_after_s=max(_seconds(reply[7]), 1) if reply[7] else 0,
            rate=rate,
        )

    async def settle(self, req: SettleRequest) -> SettleResult:
        """Release, count the actual cost, correct TPM, report crossings, append the usage event.

        A second settle of the same request id (within `SETTLED_MARKER_TTL_MS`) changes nothing.
        """
        keys, args = _settle_call(req)
        return _settle_result(await self._call(self._scripts.run, self._settle, keys, args))

    async def settle_many(
        self, requests: list[SettleRequest], may_wait_s: float = 0.0
    ) -> list[SettleResult | LimitStoreUnavailable]:
        """`settle` of each request, sent together (with the next admission, when one comes
        within `may_wait_s`: `PipelinedScripts.run_many`); a request Redis failed gets its
        `LimitStoreUnavailable` in its place."""
        calls = [_settle_call(req) for req in requests]
        replies = await self._scripts.run_many(self._settle, calls, may_wait_s)
        results: list[SettleResult | LimitStoreUnavailable] = []
        for reply in replies:
            if isinstance(reply, REDIS_ERRORS):
                results.append(LimitStoreUnavailable(f"Redis: {reply}"))
            elif isinstance(reply, BaseException):
                raise reply
            else:
                results.append(_settle_result(reply))
        return results

    async def release(self, owner_id: str, request_id: str, period_id: str) -> bool:
        """Drop a reservation without counting anything; False if there was none."""
        reply = await self._call(
            self._scripts.run,
            self._release,
            (
                keyspace.owner_spend(owner_id, period_id),
                keyspace.owner_reservations(owner_id, period_id),
                keyspace.owner_reservation_expiries(owner_id, period_id),
            ),
            (request_id,),
        )
        return reply == 1

    async def rebuild_spend(
        self,
        owner_id: str,
        period_id: str,
        period_end_ms: int,
        spent_microcents: int,
        *,
        now_ms: int | None = None,
        warned: bool = False,
        exhausted: bool = False,
    ) -> bool:
        """Set the period's spent (summed from the ledger) and mark the owner ready — only if it
        is not ready yet. `warned` / `exhausted`: the period's budget events that already fired,
        so that they do not fire again. `now_ms` (default: the clock) dates the hash's TTL.
        True if this call rebuilt it."""
        reply = await self._call(
            self._scripts.run,
            self._rebuild,
            (keyspace.owner_state(owner_id), keyspace.owner_spend(owner_id, period_id)),
            (
                spent_microcents,
                _spend_ttl_ms(period_end_ms, _now_ms() if now_ms is None else now_ms),
                1 if warned else 0,
                1 if exhausted else 0,
            ),
        )
        return reply == 1

    async def read_spend(self, owner_id: str, period_id: str) -> tuple[int, int]:
        """(spent, reserved) micro-cents of the period; reserved may still hold expired
        reservations that the next admission sweeps."""
        spent, reserved = await self._call(
            self._redis.hmget, keyspace.owner_spend(owner_id, period_id), ["spent", "reserved"]
        )
        return int(spent or 0), int(reserved or 0)

    async def _call(self, method: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except REDIS_ERRORS as exc:
            raise LimitStoreUnavailable(f"Redis: {exc}") from exc


def _settle_call(req: SettleRequest) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The settle script's KEYS and ARGV for `req`."""
    if req.event and not req.event.endswith(b"}"):
        raise ValueError("the usage event must be a compact JSON object")
    owner, period = req.owner_id, req.period_id
    keys = (
        keyspace.owner_spend(owner, period),
        keyspace.owner_reservations(owner, period),
        keyspace.owner_reservation_expiries(owner, period),
        keyspace.owner_window(owner, "tpm"),
        keyspace.owner_settled(owner, req.request_id),
        keyspace.owner_usage_stream(owner),
    )
    args = (
        req.now_ms,
        req.request_id,
        -1 if req.cap_microcents is None else req.cap_microcents,
        req.cost_microcents,
        -1 if req.tpm is None else req.tpm,
        req.tpm_input_tokens,
        req.actual_tokens,
        req.admitted_ms,
        _spend_ttl_ms(req.period_end_ms, req.now_ms),
        SETTLED_MARKER_TTL_MS,
        owner,
        req.parent_id or "",
        period,
        req.event,
    )
    return keys, args


def _settle_result(reply: list[int]) -> SettleResult:
    crossed = (80,) * reply[3] + (100,) * reply[4]
    return SettleResult(reply[0] == 1, reply[1], reply[2], crossed)
