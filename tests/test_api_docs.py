"""/api/docs in a real browser: Swagger UI from this site's static files, under the strict CSP."""

import threading
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def visit_docs(url: str) -> dict:
    """Load the page in Chromium; runs in a thread of its own, so Playwright's event loop never
    meets another one (the browser tests keep theirs open for the whole session)."""
    from playwright.sync_api import sync_playwright

    seen: dict = {"console": [], "hosts": set()}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page()
            page.on("console", lambda message: seen["console"].append(f"{message.type}: {message.text}"))
            page.on("request", lambda request: seen["hosts"].add(request.url.split("/")[2]))
            page.goto(url)
            page.wait_for_selector(".opblock", timeout=20_000)
            seen["paths"] = set(page.locator(".opblock-summary-path").all_inner_texts())
        finally:
            browser.close()
    return seen


def test_swagger_ui_lists_every_operation_with_no_csp_violation_and_no_cdn(live_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing")
    result: dict = {}

    def run():
        try:
            result.update(visit_docs(f"{live_server.url}/api/docs"))
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)

    assert "error" not in result, result.get("error")
    assert {
        "/api/requests",
        "/api/requests/bulk",
        "/api/requests/{request_id}/approve",
        "/api/audit",
    } <= result["paths"]
    assert not [
        line for line in result["console"] if "Content Security Policy" in line or line.startswith("error")
    ]
    assert result["hosts"] == {live_server.url.split("/")[2]}  # nothing from a CDN
