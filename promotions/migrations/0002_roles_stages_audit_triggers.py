"""The four role groups, the default stage catalog, the audit chain head and the
append-only triggers on the audit table."""

from datetime import timedelta

from django.db import migrations
from django.utils import timezone

from promotions.audit import triggers as audit_triggers
from promotions.audit.format import GENESIS_HASH, compute_hash, utc_iso

ROLES = ("Requesters", "Reviewers", "Stage admins", "Auditors")

STAGES = [
    # name, position, mlflow_stage, from None, allowed_from names, approvals, archive, groups
    (
        "Staging",
        10,
        "Staging",
        True,
        [],
        1,
        False,
        ["Reviewers"],
        "Pre-production: integration tests and shadow traffic.",
    ),
    (
        "Production",
        20,
        "Production",
        False,
        ["Staging"],
        2,
        True,
        ["Reviewers"],
        "Serves live traffic. Two distinct reviewers; the previous holder is archived.",
    ),
    (
        "Archived",
        30,
        "Archived",
        False,
        [],
        1,
        False,
        ["Reviewers", "Stage admins"],
        "Retired versions. May come from any stage.",
    ),
]


def forwards(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Stage = apps.get_model("promotions", "Stage")
    AuditEvent = apps.get_model("promotions", "AuditEvent")
    AuditChainHead = apps.get_model("promotions", "AuditChainHead")

    groups = {name: Group.objects.get_or_create(name=name)[0] for name in ROLES}
    head, _ = AuditChainHead.objects.get_or_create(pk=1, defaults={"last_hash": GENESIS_HASH})

    created = {}
    for name, position, mlflow_stage, from_none, allowed, approvals, archive, approvers, text in STAGES:
        stage = Stage.objects.create(
            name=name,
            position=position,
            description=text,
            mlflow_stage=mlflow_stage,
            allow_from_none=from_none,
            required_approvals=approvals,
            archive_existing=archive,
            request_ttl=timedelta(days=7),
        )
        stage.approver_groups.set([groups[g] for g in approvers])
        stage.allowed_from.set([created[a] for a in allowed])
        created[name] = stage

        payload = {
            "sequence": head.last_sequence + 1,
            "created_at": utc_iso(timezone.now()),
            "actor_username": "",
            "actor_name": "system",
            "action": "stage.created",
            "model_name": "",
            "version": None,
            "from_stage": "",
            "to_stage": name,
            "request_id": None,
            "meaning": f"Stage {name} created with the default catalog",
            "details": {"required_approvals": approvals, "mlflow_stage": mlflow_stage},
            "prev_hash": head.last_hash,
        }
        digest = compute_hash(payload)
        AuditEvent.objects.create(
            sequence=payload["sequence"],
            created_at=payload["created_at"],
            actor_name="system",
            action="stage.created",
            to_stage=name,
            meaning=payload["meaning"],
            details=payload["details"],
            prev_hash=payload["prev_hash"],
            hash=digest,
        )
        head.last_sequence, head.last_hash = payload["sequence"], digest
        head.save()

    audit_triggers.install(schema_editor.connection)


def backwards(apps, schema_editor):
    audit_triggers.remove(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("promotions", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
