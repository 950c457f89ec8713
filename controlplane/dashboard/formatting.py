"""How the dashboard writes numbers: money, shares, budget bars, and JSON for the charts.

Money arrives as integer micro-cents (`aigw.money`) and is shown as dollars with cents, rounded
half up; a non-zero amount under half a cent reads "< $0.01" so that a small spend never looks
like none. The exact figure goes in a tooltip. Only integers and `Decimal` are used: no binary
floating point touches money.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from markupsafe import Markup

from aigw.money import MICROCENTS_PER_CENT
from controlplane.responses import dumps

MICROCENTS_PER_DOLLAR = 100 * MICROCENTS_PER_CENT
WARNING_PERMILLE = 800  # the 80 % budget warning of the webhooks, as the bar's amber
_CENT = Decimal("0.01")


def dollars_exact(microcents: int) -> Decimal:
    """Dollars with every digit (up to eight decimals)."""
    return Decimal(microcents).scaleb(-8)


def dollars(microcents: int) -> str:
    """`$1,234.56`; `< $0.01` for a positive amount that rounds to nothing."""
    rounded = dollars_exact(microcents).quantize(_CENT, rounding=ROUND_HALF_UP)
    if microcents and not rounded:
        return "< $0.01"
    return f"${rounded:,.2f}"


def dollars_title(microcents: int) -> str:
    """The exact amount for a tooltip: `$0.00312500 (0.3125 ¢)`."""
    cents = Decimal(microcents).scaleb(-6).normalize()
    return f"${dollars_exact(microcents):,.8f} ({cents:f} ¢)"


def permille(part: int, whole: int) -> int:
    """`part / whole` in thousandths, rounded down; 0 when `whole` is 0."""
    return part * 1000 // whole if whole > 0 else 0


def percent_text(per_mille: int) -> str:
    """`12.3 %` from thousandths."""
    return f"{per_mille // 10}.{per_mille % 10} %"


def count(value: int) -> str:
    return f"{value:,}"


@dataclass(frozen=True, slots=True)
class BudgetBar:
    """What a spend-vs-cap bar shows. `fill` is the bar's length in percent of its track (0-100,
    one decimal, as text for an SVG attribute); `level` names its colour."""

    spent_microcents: int
    cap_microcents: int | None
    used_permille: int | None
    fill: str
    level: str

    @property
    def has_cap(self) -> bool:
        return self.cap_microcents is not None

    @property
    def remaining_microcents(self) -> int:
        """What is left of the cap (0 once reached); 0 without a cap."""
        return max((self.cap_microcents or 0) - self.spent_microcents, 0)

    @property
    def label(self) -> str:
        spent = dollars(self.spent_microcents)
        if self.cap_microcents is None or self.used_permille is None:
            return f"{spent} spent, no cap"
        used = percent_text(self.used_permille)
        return f"{spent} of {dollars(self.cap_microcents)} ({used})"


def budget_bar(spent_microcents: int, cap_cents: int | None) -> BudgetBar:
    """The bar of a sub-account that spent `spent_microcents` against a cap in cents (None: no
    cap). Amber from 80 % of the cap, red at 100 %; a cap of 0 is full from the start."""
    if cap_cents is None:
        return BudgetBar(spent_microcents, None, None, "0", "none")
    cap = cap_cents * MICROCENTS_PER_CENT
    used = permille(spent_microcents, cap) if cap else 1000
    if used >= 1000:
        level = "over"
    elif used >= WARNING_PERMILLE:
        level = "warn"
    else:
        level = "ok"
    shown = min(used, 1000)
    return BudgetBar(spent_microcents, cap, used, f"{shown // 10}.{shown % 10}", level)


def script_json(value: Any) -> Markup:
    """`value` as JSON to embed in `<script type="application/json">`: `Decimal`s stay exact
    numbers, and `<`, `>`, `&` are escaped so no text can close the script element."""
    text = dumps(value).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)
