"""How the dashboard writes money and budget bars: exact, rounded as a finance person expects."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from controlplane.dashboard.filters import LogQuery, month_choice, month_options
from controlplane.dashboard.formatting import budget_bar, dollars, dollars_title, script_json

CENT = 1_000_000  # micro-cents


@pytest.mark.parametrize(
    ("microcents", "shown"),
    [
        (0, "$0.00"),
        (1, "< $0.01"),
        (CENT // 2 - 1, "< $0.01"),
        (CENT // 2, "$0.01"),
        (63 * CENT + 9_000, "$0.63"),
        (123_456 * CENT + CENT // 2, "$1,234.57"),
    ],
)
def test_dollars_round_half_up_and_never_hide_a_small_spend(microcents: int, shown: str) -> None:
    assert dollars(microcents) == shown


def test_the_tooltip_carries_the_exact_amount() -> None:
    assert dollars_title(312_500) == "$0.00312500 (0.3125 ¢)"


def test_budget_bars_turn_amber_at_80_and_red_at_100_percent() -> None:
    assert budget_bar(79 * CENT, 100).level == "ok"
    warn = budget_bar(80 * CENT, 100)
    assert (warn.level, warn.fill, warn.label) == ("warn", "80.0", "$0.80 of $1.00 (80.0 %)")
    over = budget_bar(150 * CENT, 100)
    assert (over.level, over.fill, over.remaining_microcents) == ("over", "100.0", 0)
    assert over.label == "$1.50 of $1.00 (150.0 %)"
    assert budget_bar(0, 0).level == "over"
    uncapped = budget_bar(5 * CENT, None)
    assert (uncapped.has_cap, uncapped.level, uncapped.label) == (
        False,
        "none",
        "$0.05 spent, no cap",
    )


def test_chart_json_keeps_decimals_exact_and_cannot_close_its_script_element() -> None:
    text = str(script_json({"labels": ["</script><b>"], "values": [Decimal("0.00312500")]}))
    assert "</script>" not in text and "<" not in text
    assert text.endswith('"values":[0.00312500]}')


def test_only_months_the_parent_has_existed_in_can_be_chosen() -> None:
    options = month_options(datetime(2026, 9, 15, tzinfo=UTC), datetime(2026, 11, 27, tzinfo=UTC))
    assert options == [date(2026, 11, 1), date(2026, 10, 1), date(2026, 9, 1)]
    assert month_choice("2026-10", options) == date(2026, 10, 1)
    assert month_choice("2026-08", options) == date(2026, 11, 1)
    assert month_choice("garbage", options) == date(2026, 11, 1)


def test_request_log_filters_drop_what_does_not_parse() -> None:
    query = LogQuery.from_params(
        {"sub_account": "sa_abc", "status": "weird", "start": "2026-11-01", "end": "nope"}
    )
    assert (query.sub_account_id, query.status, query.end) == ("sa_abc", None, None)
    filters = query.usage_filters("acct_1")
    assert filters.start is not None and filters.start.isoformat() == "2026-11-01T00:00:00+00:00"
    assert query.params(after="req_1") == {
        "sub_account": "sa_abc",
        "start": "2026-11-01",
        "after": "req_1",
    }
    assert LogQuery.from_params({"sub_account": "'; drop"}).sub_account_id is None
