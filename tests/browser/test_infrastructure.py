"""The browser tests' own machinery, on a page the stack already serves: the API's docs."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PHONE, axe_results, blocking, describe

pytestmark = pytest.mark.e2e


def test_the_api_docs_open_in_chromium_at_both_widths(stack, page, phone_page, screenshot):
    for each in (page, phone_page):
        response = each.goto(f"{stack.url}/docs")
        assert response is not None and response.status == 200
        assert "/openapi.json" in each.locator("h1 + p").inner_text()
    assert phone_page.evaluate("window.innerWidth") == PHONE["width"]
    shots = screenshot(page, "docs")
    assert [path.stat().st_size > 0 for path in shots] == [True, True]


def test_axe_core_runs_on_the_api_docs(stack, page):
    page.goto(f"{stack.url}/docs")
    results = axe_results(page)
    # The engine ran: it reports the rules the page passed, whatever it violated.
    assert results["testEngine"]["name"] == "axe-core"
    assert any(rule["id"] == "document-title" for rule in results["passes"])
    serious = blocking(results["violations"])
    if serious:
        # Not this suite's page to fix: reported, not failed.
        pytest.skip(f"the API docs page has accessibility violations:\n{describe(serious)}")
