"""Every page, as each role, at 1280 px and 390 px, light and dark: axe-core finds no serious or
critical WCAG 2 A/AA violation (colour contrast included), and a screenshot of each is saved
under tests/e2e/artifacts/."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from promotions.models import PromotionRequest, Review
from tests.e2e.conftest import ARTIFACTS
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.e2e

AXE = (Path(__file__).resolve().parent / "vendor" / "axe.min.js").read_text()
LAYOUTS = [("wide", 1280, 900), ("narrow", 390, 844)]
SCHEMES = ["light", "dark"]
ROLES = ["requester", "reviewer", "stage_admin", "auditor"]


def filed(model, number, stage_name, status, **fields):
    now = timezone.now()
    return PromotionRequest.objects.create(
        **fields,
        version=version(model, number),
        stage=stage(stage_name),
        requested_by_name="riley",
        justification="Retrained on Q3 data; +2.1 pt accuracy on the holdout.",
        status=status,
        evidence={},
        evidence_sha256="0" * 64,
        created_at=now - timedelta(hours=2),
        updated_at=now,
        expires_at=now + timedelta(days=7),
        decided_at=None if status == PromotionRequest.Status.PENDING else now,
        applied_at=now if status == PromotionRequest.Status.APPLIED else None,
    )


@pytest.fixture
def site(requester, reviewer, stage_admin, auditor):
    model = mirror_model(
        "sales_forecast",
        {1: {"current_stage": "Production"}, 2: {"current_stage": "Staging"}, 3: {}},
        aliases={"champion": 1},
    )
    pending = filed(model, 2, "Production", PromotionRequest.Status.PENDING)
    applied = filed(model, 3, "Staging", PromotionRequest.Status.APPLIED)
    # The states with the most to say: a failure with its sentence and raw details, a
    # rejection with the reviewer's comment, an expiry.
    failed = filed(
        model,
        3,
        "Production",
        PromotionRequest.Status.FAILED,
        attempts=5,
        last_error="MLflow at http://mlflow.internal:5000 is not answering.",
        last_error_detail="ConnectionError: HTTPConnectionPool(host='mlflow.internal', port=5000): "
        "Max retries exceeded with url: /api/2.0/mlflow/model-versions/transition-stage "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f2e>: "
        "Failed to establish a new connection: [Errno 111] Connection refused'))",
    )
    rejected = filed(model, 1, "Staging", PromotionRequest.Status.REJECTED)
    Review.objects.create(
        request=rejected,
        reviewer=reviewer,
        reviewer_name="Rex Tester",
        decision=Review.Decision.REJECT,
        comment="The holdout set overlaps the training window; re-run on a clean split.",
        evidence_sha256="0" * 64,
        created_at=timezone.now(),
    )
    expired = filed(model, 2, "Archived", PromotionRequest.Status.EXPIRED)
    return {
        "model": model.name,
        "pending": pending.pk,
        "applied": applied.pk,
        "failed": failed.pk,
        "rejected": rejected.pk,
        "expired": expired.pk,
    }


def pages(role: str, site: dict) -> list[tuple[str, str]]:
    name = site["model"]
    common = [
        ("queue-mine", "/?tab=mine"),
        ("queue-open", "/?tab=open"),
        ("queue-recent", "/?tab=recent"),
        ("models", "/models/"),
        ("model", f"/models/{name}/"),
        ("model-history", f"/models/{name}/history/"),
        ("stages", "/stages/"),
        ("request-pending", f"/requests/{site['pending']}/"),
        ("request-applied", f"/requests/{site['applied']}/"),
        ("request-failed", f"/requests/{site['failed']}/"),
        ("request-rejected", f"/requests/{site['rejected']}/"),
        ("request-expired", f"/requests/{site['expired']}/"),
        ("tokens", "/settings/tokens/"),
    ]
    if role == "requester":
        common.append(("request-form", "/requests/new/"))
    if role == "auditor":
        common += [
            ("audit", "/audit/"),
            ("audit-metrics", "/audit/metrics/"),
            ("audit-access", "/audit/access/"),
        ]
    return common


def axe_problems(page) -> list[str]:
    # The site's CSP forbids inline scripts, so the context bypasses CSP (see `walk`) and axe
    # is evaluated as a plain expression rather than added as a <script>.
    page.evaluate(AXE)
    result = page.evaluate(
        """() => axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']},
                                     resultTypes: ['violations']})"""
    )
    problems = []
    for violation in result["violations"]:
        if violation["impact"] not in ("serious", "critical"):
            continue
        targets = ", ".join(" ".join(node["target"]) for node in violation["nodes"][:5])
        problems.append(f"{violation['impact']} {violation['id']}: {violation['help']} — {targets}")
    return problems


def walk(browser, live_server, role: str, username: str, site: dict) -> list[str]:
    # bypass_csp only so axe can run; the pages' own scripts load as in production.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    found = []
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        for scheme in SCHEMES:
            page.emulate_media(color_scheme=scheme)
            for layout, width, height in LAYOUTS:
                page.set_viewport_size({"width": width, "height": height})
                page.context.clear_cookies()
                page.goto(f"{live_server.url}/accounts/login/")
                if (scheme, layout) == ("light", "wide"):
                    found += [f"login [{scheme} {layout}] {p}" for p in axe_problems(page)]
                page.screenshot(path=str(ARTIFACTS / f"login-{scheme}-{width}.png"), full_page=True)
                page.get_by_label("User name").fill(username)
                page.get_by_label("Password").fill(f"pw-{username}")
                page.get_by_role("button", name="Sign in").click()
                page.get_by_role("button", name="Log out").wait_for()
                for label, path in pages(role, site):
                    page.goto(f"{live_server.url}{path}")
                    found += [f"{label} [{scheme} {layout}] {p}" for p in axe_problems(page)]
                    # Every page at both widths in light; dark at 1280 only, to keep the run short.
                    if (scheme, layout) != ("dark", "narrow"):
                        shot = ARTIFACTS / f"{role}-{label}-{scheme}-{width}.png"
                        page.screenshot(path=str(shot), full_page=True)
                    overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
                    if overflow:
                        found.append(f"{label} [{scheme} {layout}] the page scrolls sideways")
    finally:
        context.close()
    return found


@pytest.mark.parametrize("role", ROLES)
def test_it_shows_every_page_without_serious_accessibility_violations(
    browser, live_server, site, role, request
):
    username = request.getfixturevalue(role).username
    problems = walk(browser, live_server, role, username, site)
    assert not problems, "\n".join(problems)
