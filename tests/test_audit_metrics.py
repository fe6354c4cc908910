"""The lead-time dashboard: counts, median/p90 lead times and failure rate per stage and week."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from promotions import audit, metrics
from promotions.models import PromotionRequest
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db
HOUR = 3600


@pytest.fixture
def model_version():
    return version(mirror_model("sales_forecast", {5: {}}), 5)


def promotion(model_version, stage_name, *, applied_at, to_approval, to_applied, status="applied"):
    decided_at = applied_at - timedelta(seconds=to_applied)
    created_at = decided_at - timedelta(seconds=to_approval)
    return PromotionRequest.objects.create(
        version=model_version,
        stage=stage(stage_name),
        requested_by_name="Riley Tester",
        justification="metrics",
        status=status,
        evidence_sha256="0" * 64,
        created_at=created_at,
        updated_at=applied_at,
        expires_at=created_at + timedelta(days=7),
        decided_at=decided_at,
        applied_at=applied_at if status == "applied" else None,
    )


def failure(stage_name):
    audit.record(
        action="promotion.failed",
        meaning=f"Failed: promote sales_forecast v5 to {stage_name}: MLflow refused",
        model_name="sales_forecast",
        version=5,
        to_stage=stage_name,
    )


@pytest.fixture
def this_week(model_version):
    """Three Production promotions and one failure, one Staging promotion, all this week."""
    now = timezone.now()
    for to_approval, to_applied in ((1 * HOUR, 60), (2 * HOUR, 120), (10 * HOUR, 600)):
        promotion(model_version, "Production", applied_at=now, to_approval=to_approval, to_applied=to_applied)
    promotion(model_version, "Staging", applied_at=now, to_approval=1800, to_applied=45)
    failure("Production")
    # not counted: applied before the window, and approved but not applied yet
    promotion(model_version, "Production", applied_at=now - timedelta(weeks=30), to_approval=1, to_applied=1)
    promotion(model_version, "Production", applied_at=now, to_approval=5, to_applied=5, status="approved")
    return now


def test_it_computes_median_p90_and_failure_rate_per_stage_and_week(this_week):
    stats = {s.stage: s for s in metrics.lead_times(now=this_week)}
    assert list(stats) == ["Staging", "Production"]  # catalog order
    (week,) = stats["Production"].weeks
    year, number, _ = this_week.isocalendar()
    assert week.week == f"{year}-W{number:02d}"
    assert (week.applied, week.failed) == (3, 1)
    assert week.failure_rate == 0.25
    assert week.to_approval.median == 2 * HOUR
    assert week.to_approval.p90 == pytest.approx(2 * HOUR + 0.8 * 8 * HOUR)  # between ranks 2 and 3
    assert (week.to_applied.median, week.to_applied.p90) == (120, pytest.approx(120 + 0.8 * 480))
    (staging,) = stats["Staging"].weeks
    assert (staging.applied, staging.failed, staging.failure_rate) == (1, 0, 0)
    assert staging.to_approval.median == staging.to_approval.p90 == 1800


def test_the_page_draws_bars_and_shows_the_numbers_beside_them(client, auditor, this_week):
    client.force_login(auditor)
    response = client.get("/audit/metrics/")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.index("<h2>Staging") < body.index("<h2>Production")
    production = body[body.index("<h2>Production") :]
    year, number, _ = this_week.isocalendar()
    row = re.search(rf"<tr><td><span[^>]*>{year}-W{number:02d}</span></td>(.*?)</tr>", production).group(1)
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells == ["3", "1", "25%", "2.0 h", "8.4 h", "2 min", "8 min"]
    assert production.count('<svg class="chart"') == 3
    assert '<rect class="bar"' in production and '<rect class="bar bar--p90"' in production
    assert '<rect class="bar bar--fail"' in production
    assert f"{year}-W{number:02d}: median 2.0 h" in production  # each bar names its value


def test_bars_are_scaled_to_the_tallest(client, auditor, this_week):
    client.force_login(auditor)
    body = client.get("/audit/metrics/").content.decode()
    production = body[body.index("<h2>Production") :]
    heights = [float(h) for h in re.findall(r'<rect class="bar[^"]*"[^>]*height="([\d.]+)"', production)]
    median, p90 = heights[0], heights[1]  # request → approval: 2.0 h and 8.4 h on a 10 h axis
    assert p90 / median == pytest.approx(8.4 / 2, rel=0.01)
    assert max(heights) <= metrics.CHART_HEIGHT


def test_the_charts_pass_the_csp(client, auditor, this_week):
    client.force_login(auditor)
    body = client.get("/audit/metrics/").content.decode()
    assert "style=" not in body
    assert not re.search(r"<script(?![^>]*\bsrc=)", body)


def test_it_says_so_when_there_is_nothing_to_show(client, auditor):
    client.force_login(auditor)
    body = client.get("/audit/metrics/").content.decode()
    assert "No promotion was applied or failed in the last 26 weeks" in body
    assert "<svg" not in body


def test_the_dashboard_costs_the_same_queries_however_many_promotions(
    client, auditor, model_version, django_assert_max_num_queries
):
    now = timezone.now()
    for week in range(26):
        for _ in range(3):
            promotion(
                model_version,
                "Staging",
                applied_at=now - timedelta(weeks=week),
                to_approval=HOUR,
                to_applied=60,
            )
    client.force_login(auditor)
    with django_assert_max_num_queries(8):
        body = client.get("/audit/metrics/").content.decode()
    # a median bar a week in each of the two lead-time charts, the oldest week included
    assert body.count('<rect class="bar"') == 2 * 26
