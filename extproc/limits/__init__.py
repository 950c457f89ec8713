"""Spend caps and rate limits in Redis: one Lua script per admission, one per settlement.

Keys (`aigw.keyspace`, all of one owner under `aigw:{u<shard>}:<owner>`):
`…:state` (ready=1), `…:spend:<period>` (spent, reserved, warned, exhausted),
`…:resv:<period>` (request id → reserved micro-cents), `…:rexp:<period>` (request id scored by
its reservation's expiry), `…:win:rpm|rpd|tpm` (windows), `…:rl` (rate-limited debounce),
`…:settled:<request id>` (settle idempotency), and the owner's usage shard `aigw:{u<shard>}:usage`
that admission and settle append events to. One hash tag for all of them: every script touches
one Redis Cluster slot, and names each key it touches in KEYS.

No overage: admission sweeps the owner's expired reservations, then, only if every window and the
budget pass, reserves `input + ceil(max_out x out_nc / 1000)` — or clamps the output to
`floor((cap - spent - reserved - input) x 1000 / out_nc)` tokens when at least `min_output_tokens`
fit, reserving `input + ceil(granted x out_nc / 1000)` ≤ what remains. So spent + reserved ≤ cap
holds after every script, and settle's actual cost ≤ the reservation keeps spent ≤ cap. A
reservation lives until settle or its expiry (`reservation_ttl_ms`, longer than any response);
the reservation keys share the spend hash's TTL (period end + 35 days) so that `reserved` can
never outlive the entries it sums, and an empty hash or set disappears by itself. (Should
`reserved` ever outlive them anyway, e.g. under a maxmemory eviction, admission resets it to 0 once
the expiry set is gone.)

Settle takes the admission's period and request id. It releases the reservation unless the sweep
already did, adds the actual cost, sets `warned` / `exhausted` when spent first reaches 80 % / 100 %
of the cap in the period, and appends the caller's usage event with `"crossed": [80, 100]` spliced
in before its closing brace (no JSON decoding in Redis), then a `budget` event per crossing. A
`settled` marker (15 minutes) makes a repeated settle a no-op. A 402 whose cap has not fired
`exhausted` yet fires it — unless even an empty budget could not pay the request's minimum, which
says nothing about the budget. Events are only appended: deleting them is the ingester's.

Sliding windows (RPM and TPM: 60 s in 1 s buckets; RPD: 24 h in 5 min buckets), counted
conservatively: a bucket counts while it overlaps [now - W, now], i.e. buckets
`floor((now - W) / B)` … `floor(now / B)`. Every admission inside any closed interval of length W
is inside the window of the last of them, so no W-long interval ever holds more than the limit —
a burst at 59.9 s and another at 60.1 s cannot double up. Precision: an admission keeps counting
until its bucket has wholly left the window, at most one bucket (1 s, resp. 5 min) longer than an
exact sliding log: the limit is reached up to that much early, never late. Memory: a window hash
holds at most W/B + 1 bucket fields (61, resp. 289) plus `n` (their sum), `lo`, `hi`; buckets that
leave the window are deleted on the next admission (amortised O(1)), and the key expires W + B
after its last write, when none of its buckets can count any more. Retry-After is the time until
enough of the oldest buckets have left for the refused request to pass (rounded up to whole
seconds, ≥ 1); a window's `reset` is the time until it holds nothing (OpenAI's meaning).

Redis commands inside one script (measured with INFO commandstats): an admission of a capped
owner with rpm, rpd and tpm limits runs 17 on success (HMGET spend; HGET state; per window HMGET,
HSET, PEXPIRE; HSETNX + HSET + ZADD for the reservation; 3 PEXPIRE when it is the period's first
open reservation, else ZRANGEBYSCORE + EXISTS for the sweep instead), and only reads on a refusal
but for its event (GET + SET + XADD once a minute, or HSET + PEXPIRE + XADD once a period). A
settle runs 7 (SET NX, HMGET, HGET, HDEL, ZREM, HSET, XADD), plus HMGET + HSET + PEXPIRE for a
TPM correction, PEXPIRE for a new spend hash and one XADD per threshold crossed.
"""

from extproc.limits.store import LimitStore
from extproc.limits.types import (
    AdmitRequest,
    AdmitResult,
    LimitStoreUnavailable,
    RateFigures,
    Refusal,
    SettleRequest,
    SettleResult,
)

__all__ = [
    "AdmitRequest",
    "AdmitResult",
    "LimitStore",
    "LimitStoreUnavailable",
    "RateFigures",
    "Refusal",
    "SettleRequest",
    "SettleResult",
]
