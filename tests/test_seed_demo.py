"""seed_demo creates the demo's accounts only where a demo is meant, and never grants a role."""

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command

from promotions.management.commands.seed_demo import DEMO_MODELS
from registry_sync import gateway
from tests.conftest import private_mlflow_server

pytestmark = pytest.mark.django_db

DEMO_NAMES = {"riley", "rex", "rita", "sam", "alice"}


def test_it_refuses_to_run_with_debug_off(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="runs only with DEBUG=true"):
        call_command("seed_demo", "--skip-mlflow")
    assert not User.objects.exists()


def test_it_seeds_production_settings_only_when_told_in_so_many_words(settings):
    settings.DEBUG = False
    call_command("seed_demo", "--skip-mlflow", "--demo-on-production")
    assert set(User.objects.values_list("username", flat=True)) == DEMO_NAMES


def test_it_creates_the_demo_users_with_debug_on(settings):
    settings.DEBUG = True
    call_command("seed_demo", "--skip-mlflow")
    rita = User.objects.get(username="rita")
    assert rita.check_password("promote-demo")
    assert list(rita.groups.values_list("name", flat=True)) == ["Reviewers"]


def test_it_never_adds_an_existing_user_to_a_group(settings):
    settings.DEBUG = True
    someone = User.objects.create_user("rex", password="their-own-password-1")
    call_command("seed_demo", "--skip-mlflow")
    someone.refresh_from_db()
    assert not someone.groups.exists()
    assert someone.check_password("their-own-password-1")
    assert not someone.check_password("promote-demo")
    assert Group.objects.get(name="Reviewers").user_set.filter(username="rita").exists()


def test_a_second_run_changes_nobody(settings):
    settings.DEBUG = True
    call_command("seed_demo", "--skip-mlflow")
    User.objects.filter(username="sam").update(is_active=False)
    Group.objects.get(name="Stage admins").user_set.remove(User.objects.get(username="sam"))
    call_command("seed_demo", "--skip-mlflow")
    sam = User.objects.get(username="sam")
    assert not sam.is_active
    assert not sam.groups.exists()


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory):
    """Seeding is of the whole registry (it stops when sales_forecast exists): a server of its own."""
    with private_mlflow_server(tmp_path_factory.mktemp("mlflow-demo")) as server:
        yield server


def test_the_demo_versions_carry_model_files_whose_signatures_differ(settings, own_registry):
    """Approvals are bound to the model's files, and the request page compares signatures: every
    demo version has real files, and sales_forecast shows an added column and a breaking change."""
    settings.DEBUG = True
    settings.MLFLOW_TRACKING_URI = own_registry.url
    call_command("seed_demo", "--wait", "30")
    sales = {n: gateway.get_model_files("sales_forecast", n) for n in (1, 3, 5)}
    columns = {n: {c["name"]: c["type"] for c in files.inputs} for n, files in sales.items()}
    assert columns[1] == {"store_id": "long", "week": "long", "price": "double"}
    assert columns[3] == {**columns[1], "promo_flag": "boolean"}
    assert columns[5]["store_id"] == "string"
    assert sales[3].flavors == {"python_function": "", "sklearn": "1.6.1"}
    assert "scikit-learn==1.6.1" in sales[3].requirements
    for name, spec in DEMO_MODELS.items():
        for number in range(1, spec["versions"] + 1):
            assert gateway.get_model_files(name, number).inputs, (name, number)
