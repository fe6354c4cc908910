"""List pages issue a bounded number of queries, at 10 rows and at 1,000."""

import pytest
from django.utils import timezone

from promotions.models import PromotionRequest, Review, Stage
from registry_sync.models import ModelVersion, RegisteredModel

pytestmark = pytest.mark.django_db


def fill(count, requester, reviewer):
    production = Stage.objects.get(name="Production")
    models = RegisteredModel.objects.bulk_create([RegisteredModel(name=f"m{i:05d}") for i in range(count)])
    versions = ModelVersion.objects.bulk_create(
        [ModelVersion(model=m, version=1, current_stage="Staging", metrics={"accuracy": 0.9}) for m in models]
    )
    now = timezone.now()
    requests = PromotionRequest.objects.bulk_create(
        [
            PromotionRequest(
                version=v,
                stage=production,
                requested_by=requester,
                requested_by_name="Riley",
                justification="bulk",
                source_stage="Staging",
                evidence={"metrics": {"accuracy": 0.9}},
                evidence_sha256="0" * 64,
                check_results=[
                    {"rule": "metric accuracy >= 0.8", "passed": True, "actual": "0.9", "message": ""}
                ],
                created_at=now,
                updated_at=now,
                expires_at=now + production.request_ttl,
            )
            for v in versions
        ]
    )
    Review.objects.bulk_create(
        [
            Review(
                request=r,
                reviewer=reviewer,
                reviewer_name="Rex",
                decision="approve",
                evidence_sha256="0" * 64,
                created_at=now,
            )
            for r in requests[: count // 2]
        ]
    )
    return requests


@pytest.mark.parametrize("count", [10, 1000])
@pytest.mark.parametrize("tab", ["mine", "open", "recent"])
def test_the_queue(client, requester, reviewer, reviewer2, django_assert_max_num_queries, count, tab):
    fill(count, requester, reviewer)
    client.force_login(reviewer2)
    with django_assert_max_num_queries(14):
        response = client.get(f"/?tab={tab}")
    assert response.status_code == 200


@pytest.mark.parametrize("count", [10, 1000])
def test_a_request_page(client, requester, reviewer, reviewer2, django_assert_max_num_queries, count):
    requests = fill(count, requester, reviewer)
    client.force_login(reviewer2)
    with django_assert_max_num_queries(16):
        response = client.get(f"/requests/{requests[0].pk}/")
    assert response.status_code == 200
    assert "m00000" in response.content.decode()


def test_the_stage_catalog(client, requester, django_assert_max_num_queries):
    client.force_login(requester)
    with django_assert_max_num_queries(10):
        assert client.get("/stages/").status_code == 200
