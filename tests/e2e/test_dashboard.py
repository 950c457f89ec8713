"""The dashboard in a real headless Chromium, through Envoy, on a gateway with real usage: sign in
with the parent key, read the spend bars, open a sub-account, filter the request log, sign out.

Chromium is Debian's (`/usr/bin/chromium`, installed by `.ci/run`), driven by Playwright's async
API (the suite runs one asyncio loop). Without it the test fails under CI and is skipped
elsewhere. Full-page screenshots land in `test-artifacts/`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright, expect

from tests.e2e.conftest import E2E, Parent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_INSTALLED = os.path.exists(CHROMIUM)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PRICEY = "openai/gpt-test-pricey"  # $10 / $100 per million input / output tokens
CHEAP = "openai/gpt-5.4-mini"
FULL_OUTPUT = {"x-mock-chunks": "2000"}  # the mock writes until max_tokens
INGEST_TIMEOUT_S = 20.0
DAYS_DRAWN = re.compile(r"^[1-9][0-9]?$")  # one point per day of the month so far


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_INSTALLED:
        message = f"Chromium is not installed at {CHROMIUM}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{message}; install it with: sudo apt-get install -y chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


def chat(client: openai.OpenAI, model: str, **extra: Any) -> None:
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Summarise our invoice."}],
        max_tokens=2000,
        extra_headers=FULL_OUTPUT,
        **extra,
    )


def failing_chat(e2e: E2E, key: str) -> None:
    """A request the provider answers with a 500: it reaches the provider, so it is logged."""
    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}", "x-mock-status": "500"},
        json={"model": CHEAP, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 500


def wait_for_requests(parent: Parent, sub_account_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    while True:
        response = parent.call("GET", "/requests", params={"sub_account_id": sub_account_id})
        rows = list(response.json()["data"])
        if len(rows) >= count or time.monotonic() > deadline:
            assert len(rows) == count, rows
            return rows
        time.sleep(0.2)


def shown_dollars(cents: Any) -> str:
    """How the dashboard writes an amount of the API (cents): dollars, rounded half up."""
    value = (Decimal(str(cents)) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"${value:,.2f}"


def shown_share(cents: Any, cap_cents: int) -> str:
    """How the dashboard writes the share of a cap spent: tenths of a percent, rounded down."""
    permille = int(Decimal(str(cents)) * 1000 // cap_cents)
    return f"{permille // 10}.{permille % 10} %"


def spent_cents(parent: Parent, sub_account_id: str) -> Decimal:
    spend = parent.call("GET", f"/sub-accounts/{sub_account_id}").json()["spend"]
    return Decimal(str(spend["spent_cents"]))


def watch(page: Page, origin: str) -> tuple[list[str], list[str]]:
    """Console errors of the page, and every request it makes to another origin."""
    errors: list[str] = []
    foreign: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def on_request(request: Request) -> None:
        if not request.url.startswith(origin):
            foreign.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", on_request)
    return errors, foreign


async def test_dashboard_in_a_real_browser(e2e: E2E, parent: Parent, browser: Browser) -> None:
    northwind = parent.create_sub_account(
        name="Northwind Traders", tier="pro", spend_cap_cents=100, default_tag="tenant:northwind"
    )
    contoso = parent.create_sub_account(
        name="Contoso Ltd", tier="pro", spend_cap_cents=50, rate_limit_rpm=120,
        default_tag="tenant:contoso",
    )  # fmt: skip
    for _ in range(3):
        chat(e2e.openai(northwind["key"]), PRICEY)
    chat(e2e.openai(contoso["key"]), PRICEY)
    chat(e2e.openai(contoso["key"]), PRICEY)
    chat(e2e.openai(contoso["key"]), CHEAP)
    failing_chat(e2e, contoso["key"])
    wait_for_requests(parent, northwind["id"], 3)
    contoso_requests = wait_for_requests(parent, contoso["id"], 4)
    northwind_cents = spent_cents(parent, northwind["id"])
    contoso_cents = spent_cents(parent, contoso["id"])
    assert 63 < northwind_cents < 64 and 42 < contoso_cents < 43  # 21 cents a pricey request

    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    errors, foreign = watch(page, e2e.gateway.url)
    ARTIFACTS.mkdir(exist_ok=True)

    # A protected page sends us to sign in; a wrong key is refused and opens no session.
    await page.goto(f"{e2e.gateway.url}/dashboard")
    await expect(page).to_have_url(f"{e2e.gateway.url}/dashboard/login?next=%2Fdashboard")
    await page.get_by_label("Parent account key").fill("sk-aig-" + "0" * 43)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("That key was not recognised")
    assert await context.cookies() == []
    errors.clear()  # Chromium logs the refused sign-in's 401 as a console error

    # Sign in: the overview shows both sub-accounts with their spend against their caps.
    await page.get_by_label("Parent account key").fill(parent.key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{e2e.gateway.url}/dashboard")
    (cookie,) = await context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert parent.key not in cookie["value"]
    budgets = page.get_by_test_id("budgets")
    northwind_bar = budgets.locator(f"tr[data-sub-account='{northwind['id']}']")
    contoso_bar = budgets.locator(f"tr[data-sub-account='{contoso['id']}']")
    await expect(northwind_bar).to_contain_text("Northwind Traders")
    await expect(northwind_bar.get_by_role("img")).to_have_attribute(
        "aria-label", f"$0.63 of $1.00 ({shown_share(northwind_cents, 100)})"
    )
    await expect(contoso_bar.get_by_role("img")).to_have_attribute(
        "aria-label", f"$0.42 of $0.50 ({shown_share(contoso_cents, 50)})"
    )
    await expect(contoso_bar.locator(".budget")).to_have_attribute("data-level", "warn")
    await expect(northwind_bar.locator(".budget")).to_have_attribute("data-level", "ok")
    total = shown_dollars(northwind_cents + contoso_cents)
    await expect(page.get_by_test_id("total-billed")).to_have_text(total)
    customers = page.get_by_test_id("top-customers").locator("tbody tr")
    await expect(customers.first).to_contain_text("Northwind Traders")
    await expect(customers.nth(1)).to_contain_text("Contoso Ltd")
    await expect(page.locator("canvas#by-model")).to_have_attribute("data-drawn", "2")
    await expect(page.locator("canvas#by-day")).to_have_attribute("data-drawn", DAYS_DRAWN)
    await page.screenshot(path=ARTIFACTS / "dashboard-overview.png", full_page=True)

    # The list of sub-accounts, then one of them: its limits, budget and latest requests.
    await page.get_by_role("link", name="Sub-accounts", exact=True).click()
    listed = page.get_by_test_id("sub-accounts").locator("tbody tr")
    await expect(listed).to_have_count(2)
    await expect(listed.first).to_contain_text("Northwind Traders")
    await expect(listed.first.get_by_role("img")).to_have_attribute(
        "aria-label", f"$0.63 of $1.00 ({shown_share(northwind_cents, 100)})"
    )
    await expect(listed.nth(1)).to_contain_text("Contoso Ltd")
    await page.screenshot(path=ARTIFACTS / "dashboard-sub-accounts.png", full_page=True)
    await listed.first.get_by_role("link", name="Northwind Traders").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Northwind Traders")
    limits = page.get_by_test_id("limits")
    await expect(limits).to_contain_text("pro")
    await expect(limits).to_contain_text("tenant:northwind")
    await expect(page.get_by_test_id("budget")).to_contain_text("Remaining")
    await expect(page.locator("tr[data-request-id]")).to_have_count(3)
    await expect(page.locator("tr[data-request-id]").first).to_contain_text(PRICEY)
    await page.screenshot(path=ARTIFACTS / "dashboard-sub-account.png", full_page=True)

    # The request log, filtered by model, then by sub-account and failure.
    await page.get_by_role("link", name="Request log", exact=True).first.click()
    await expect(page.locator("tr[data-request-id]")).to_have_count(7)
    await page.get_by_label("Model").select_option(CHEAP)
    await page.get_by_role("button", name="Apply").click()
    rows = page.locator("tr[data-request-id]")
    await expect(rows).to_have_count(2)
    for index in range(2):
        await expect(rows.nth(index)).to_contain_text(CHEAP)
        await expect(rows.nth(index)).to_contain_text("Contoso Ltd")
    await page.get_by_label("Model").select_option("")
    await page.get_by_label("Sub-account").select_option(label="Contoso Ltd")
    await page.get_by_label("Status").select_option("failed")
    await page.get_by_role("button", name="Apply").click()
    await expect(rows).to_have_count(1)
    failed = next(row for row in contoso_requests if row["status"] == 500)
    await expect(rows.first).to_have_attribute("data-request-id", failed["id"])
    await expect(rows.first).to_contain_text("500")
    await page.screenshot(path=ARTIFACTS / "dashboard-requests.png", full_page=True)

    # Nothing was kept in the browser's storage, and nothing came from elsewhere.
    assert await page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert parent.key not in await page.content()
    assert foreign == [] and errors == []

    # Sign out: the session is gone and every page asks to sign in again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{e2e.gateway.url}/dashboard/login")
    assert await context.cookies() == []
    await page.goto(f"{e2e.gateway.url}/dashboard/sub-accounts")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await context.close()
