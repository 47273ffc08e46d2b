"""Browser tests: the service's pages driven in Chromium against a live stack.

The browser is the system's Chromium (`make install` installs Debian's package), headless,
never one that Playwright downloads. The stack is the end-to-end tests' own (gunicorn, a
Celery worker per queue, beat, the Stripe emulator and the SMTP sink), with the settings
the customer-facing pages need and the emulator's webhooks pointed at it. Screenshots go
under the tests' state directory, never into the repository.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from devstack.servers import LocalStripe
from devstack.smtp import SmtpSink
from tests.conftest import STATE
from tests.e2e.conftest import (  # noqa: F401 (fixtures, shared with the e2e tests)
    Stack,
    admin_key,
    emulator,
    http,
    start_stack,
)
from tests.support.sellers import COMPLETE_SELLER_ENV

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = STATE / "browser" / "screenshots"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
# axe-core's two highest impacts: a page with any of these fails.
BLOCKING_IMPACTS = ("serious", "critical")
# Generous: every wait must hold on a machine half as fast as a developer's.
TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: `make install` installs Debian's"
            " chromium package as root; otherwise install it with your package manager"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _context(browser: Browser, viewport: ViewportSize) -> BrowserContext:
    context = browser.new_context(viewport=viewport, locale="en-US")
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Opens pages (each in a context of its own, like a separate tab session) at the
    desktop width unless told otherwise; all closed after the test."""
    contexts: list[BrowserContext] = []
    journal: list[str] = []

    def make(viewport: ViewportSize = DESKTOP) -> Page:
        context = _context(browser, viewport)
        contexts.append(context)
        page = context.new_page()
        _keep_journal(page, journal)
        return page

    yield make
    for context in contexts:
        context.close()
    # Shown by pytest with a failing test's output: what the browser saw go wrong.
    if journal:
        print("browser journal:\n" + "\n".join(journal))


def _keep_journal(page: Page, journal: list[str]) -> None:
    """Notes the page's console messages, script errors and refused requests."""

    def on_response(response: Any) -> None:
        if response.status >= 400:
            try:
                body = response.text()[:300]
            except PlaywrightError:  # the body may be gone with its page
                body = ""
            journal.append(f"{response.status} {response.request.method} {response.url} {body}")

    page.on("console", lambda message: journal.append(f"console.{message.type}: {message.text}"))
    page.on("pageerror", lambda error: journal.append(f"page error: {error}"))
    page.on("response", on_response)


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    """A page at desktop width (1280x800)."""
    return new_page(DESKTOP)


@pytest.fixture
def phone_page(new_page: Callable[..., Page]) -> Page:
    """A page at phone width (390x844)."""
    return new_page(PHONE)


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[Page, str], list[Path]]:
    """Saves the page as it is now, full length, at phone and at desktop width (the page is
    relaid at each, then given back its own size): <state>/browser/screenshots/<test>/."""
    folder = SCREENSHOTS / re.sub(r"[^\w.-]+", "_", request.node.name)

    def shoot(page: Page, state: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        own = page.viewport_size or DESKTOP
        saved = []
        for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
            page.set_viewport_size(size)
            path = folder / f"{state}-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
        page.set_viewport_size(own)
        return saved

    return shoot


def axe_results(page: Page) -> dict[str, Any]:
    """axe-core's whole answer on the page as it is now: passes, violations and the rest."""
    return dict(Axe().run(page).response)


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now, of every impact."""
    return list(axe_results(page)["violations"])


def describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{v['impact']}: {v['id']} ({v['help']}) at "
        + ", ".join(" ".join(map(str, node["target"])) for node in v["nodes"])
        for v in violations
    )


def blocking(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in violations if v.get("impact") in BLOCKING_IMPACTS]


def assert_accessible(page: Page) -> list[dict[str, Any]]:
    """Fails on any serious or critical axe-core violation; gives back the lesser ones."""
    violations = axe_violations(page)
    serious = blocking(violations)
    assert not serious, f"accessibility violations on {page.url}:\n{describe(serious)}"
    return violations


@pytest.fixture(scope="module")
def stack(
    database_url: str, redis_url: str, localstripe: LocalStripe, smtp_server: SmtpSink
) -> Iterator[Stack]:
    """A live stack with the customer-facing pages' settings, the emulator's webhooks
    posted to it."""
    localstripe.reset()
    smtp_server.handler.clear()
    extra_env = {
        # A seller complete enough for a valid e-invoice, as the page offers one.
        **COMPLETE_SELLER_ENV,
        "STRIPE_PUBLISHABLE_KEY": "pk_test_local",
        "STRIPE_JS_URL": f"{localstripe.url}/js.stripe.com/v3/",
        "HOSTED_LINK_KEYS": f"k1:{secrets.token_urlsafe(32)}",
    }
    stack = start_stack(
        database_url, redis_url, localstripe.url, smtp=smtp_server, extra_env=extra_env
    )
    localstripe.configure_webhook(
        f"{stack.url}/v1/webhooks/stripe", "whsec_test", webhook_id="browser"
    )
    try:
        yield stack
    finally:
        stack.stop_all()
