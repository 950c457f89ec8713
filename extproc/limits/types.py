"""The values `LimitStore` takes and returns, and its one exception."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Refusal = Literal["budget", "rpm", "rpd", "tpm", "not_ready"]
RateFigures = tuple[int, int, int]
"""(limit, remaining, reset_s) of one kind, for OpenAI's `x-ratelimit-*` headers."""


class LimitStoreUnavailable(Exception):
    """Redis could not be asked (down, timed out, or it rejected a script): fail closed."""


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    owner_id: str
    request_id: str
    now_ms: int
    period_id: str
    period_end_ms: int
    """0: the period never ends (`total`)."""
    cap_microcents: int | None
    """None: no cap (nothing is reserved)."""
    input_microcents: int
    """Worst-case cost of the input, fee included."""
    output_nanocents_per_token: int
    """Price of one output token, fee included; 0 for embeddings."""
    max_output_tokens: int
    min_output_tokens: int
    """The smallest useful answer; a clamp never grants fewer (refusal instead)."""
    reservation_ttl_ms: int
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpm_input_tokens: int = 0
    """Upper bound of the input in tokens: what the TPM window counts until settle corrects it."""
    require_ready: bool = False
    """Refuse (`not_ready`) until the control plane has rebuilt this owner's spend."""
    parent_id: str | None = None
    """Named in the `budget` / `rate_limited` events (null there when not given)."""


@dataclass(frozen=True, slots=True)
class AdmitResult:
    admitted: bool
    refusal: Refusal | None
    granted_output_tokens: int
    clamped: bool
    reserved_microcents: int
    """What this request holds (0 without a cap)."""
    spent_microcents: int
    """Settled spend of the period (0 without a cap: not read)."""
    reserved_total_microcents: int
    """Every open reservation of the period, this one included."""
    retry_after_s: int
    """For a rate refusal: whole seconds until the same request would pass (>= 1); 1 for
    `not_ready`; 0 otherwise (a budget refusal waits for the period or a higher cap)."""
    rate: dict[str, RateFigures] = field(default_factory=dict)
    """`requests` (the tighter of rpm / rpd) and `tokens` (tpm), each only when limited."""


@dataclass(frozen=True, slots=True)
class SettleRequest:
    owner_id: str
    request_id: str
    now_ms: int
    period_id: str
    """The period of the admission (its reservation lives there)."""
    period_end_ms: int
    cap_microcents: int | None
    cost_microcents: int
    """Actual cost, fee included."""
    actual_tokens: int
    tpm_input_tokens: int
    tpm: int | None
    event: bytes
    """The usage event: a compact JSON object; the script adds its `crossed` list. b"": none."""
    admitted_ms: int = 0
    """`now_ms` of the admission: the TPM bucket to correct. 0: unknown, then only extra tokens
    are counted (from now) and an over-estimate stays counted until it leaves the window."""
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class SettleResult:
    settled: bool
    """False: this request id was settled before, nothing changed."""
    spent_microcents: int
    reserved_total_microcents: int
    crossed: tuple[int, ...]
    """The thresholds (80, 100) this settle crossed."""
