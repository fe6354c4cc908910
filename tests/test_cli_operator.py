"""Entries recorded by a `manage.py` command name the operating-system user and host it ran as.

Whoever holds the database credentials can run the commands as any user of the product; the
record says which account on which machine really did it.
"""

import getpass
import socket
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from promotions import services, tokens
from promotions.models import AuditEvent
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version
from tests.registry_helpers import stage as mlflow_stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator():
    return {"os_user": getpass.getuser(), "host": socket.gethostname()}


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def assert_from_cli(event: AuditEvent, operator: dict) -> None:
    assert event.details["via"] == "cli", event.details
    assert event.details["cli"] == operator, event.details


def test_a_request_filed_as_another_user_names_the_operator(registry, model_name, requester, operator):
    number = make_version(registry.client(), model_name)

    run(
        "request_promotion",
        "--model-name",
        model_name,
        "--version",
        str(number),
        "--stage",
        "Staging",
        "--user",
        "riley",
    )

    created = AuditEvent.objects.get(action="request.created")
    assert created.actor_username == "riley"
    assert_from_cli(created, operator)


def test_a_refused_request_names_the_operator_too(registry, model_name, requester, outsider, operator):
    number = make_version(registry.client(), model_name)
    with pytest.raises(CommandError):
        run(
            "request_promotion",
            "--model-name",
            model_name,
            "--version",
            str(number),
            "--stage",
            "Staging",
            "--user",
            "olga",
        )
    assert_from_cli(AuditEvent.objects.get(action="auth.denied"), operator)


def test_a_token_created_from_the_command_line_names_the_operator(requester, operator):
    run("create_api_token", "riley", "--name", "ci")
    assert_from_cli(AuditEvent.objects.get(action="token.created"), operator)


def test_an_export_names_the_operator(tmp_path, operator):
    run("export_audit_log", "--format", "jsonl", "-o", str(tmp_path / "audit.jsonl"))
    assert_from_cli(AuditEvent.objects.get(action="audit.exported"), operator)


def test_drift_found_by_a_command_line_sync_names_the_operator(registry, model_name, operator):
    client = registry.client()
    make_version(client, model_name)
    run("sync_registry", "--model", model_name)
    mlflow_stage(client, model_name, 1, "Production")  # outside the workflow

    run("sync_registry", "--model", model_name)

    assert_from_cli(AuditEvent.objects.get(action="registry.drift", model_name=model_name), operator)


def test_verifying_records_nothing(operator):
    before = AuditEvent.objects.count()
    run("verify_audit_log")
    assert AuditEvent.objects.count() == before


def test_entries_recorded_after_a_command_do_not_name_it(requester, operator):
    run("create_api_token", "riley", "--name", "ci")
    tokens.api_token_create(user=requester, name="web")
    model = mirror_model(versions={1: {"current_stage": "None"}})
    services.promotion_request_create(
        version=version(model, 1), stage=stage("Staging"), requested_by=requester, justification="go"
    )
    later = AuditEvent.objects.exclude(details__via="cli")
    assert {event.action for event in later} == {"token.created", "request.created"}
    assert all("cli" not in event.details for event in later)
