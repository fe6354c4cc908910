"""The models list and a model page: mirror content, bounded queries."""

import pytest

from registry_sync.models import ModelVersion, RegisteredModel

pytestmark = pytest.mark.django_db


def build(models: int, versions: int) -> None:
    rows = RegisteredModel.objects.bulk_create(
        [RegisteredModel(name=f"m{i:04d}", aliases={"champion": 1}) for i in range(models)]
    )
    ModelVersion.objects.bulk_create(
        [
            ModelVersion(
                model=row,
                version=v,
                current_stage="Production" if v == 1 else ("Staging" if v == 2 else "None"),
                metrics={"accuracy": 0.9 + v / 1000},
                aliases=["champion"] if v == 1 else [],
                status="READY",
            )
            for row in rows
            for v in range(1, versions + 1)
        ]
    )


@pytest.mark.parametrize("count", [10, 1000])
def test_the_models_list_issues_a_bounded_number_of_queries(
    client, requester, django_assert_max_num_queries, count
):
    build(count, 3)
    client.force_login(requester)
    with django_assert_max_num_queries(12):
        response = client.get("/models/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "m0000" in body
    assert "@champion: v1" in body


@pytest.mark.parametrize("count", [10, 1000])
def test_a_model_page_issues_a_bounded_number_of_queries(
    client, requester, django_assert_max_num_queries, count
):
    build(1, count)
    client.force_login(requester)
    with django_assert_max_num_queries(14):
        response = client.get("/models/m0000/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Production:</strong> v1" in body
    assert "accuracy" in body


def test_the_list_filters_by_name(client, requester):
    build(3, 1)
    client.force_login(requester)
    body = client.get("/models/?q=m0001").content.decode()
    assert "m0001" in body and "m0002" not in body


def test_the_list_filter_answers_htmx_with_the_rows_fragment(client, requester):
    build(2, 1)
    client.force_login(requester)
    response = client.get("/models/?q=m0001", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert "<html" not in body
    assert "m0001" in body


def test_an_unknown_model_is_404(client, requester):
    client.force_login(requester)
    assert client.get("/models/nope/").status_code == 404


def test_names_from_mlflow_are_escaped(client, requester):
    RegisteredModel.objects.create(name="<script>alert(1)</script>", description="<b>x</b>")
    client.force_login(requester)
    body = client.get("/models/").content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body
