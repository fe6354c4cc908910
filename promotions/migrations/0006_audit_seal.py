"""Keyed evidence for the audit log: seals, the chain head's MAC, and the triggers that keep the
seals append-only and the chain head forward-only (promotions/audit/signing.py, triggers.py)."""

from django.db import migrations, models

from promotions.audit import triggers as audit_triggers

_NEW = (audit_triggers.SEAL_TABLE, audit_triggers.HEAD_TABLE)


def install_triggers(apps, schema_editor):
    # After the AddFields: SQLite rebuilds a table to add a column, and its triggers with it.
    audit_triggers.install(schema_editor.connection, _NEW)


def remove_triggers(apps, schema_editor):
    audit_triggers.remove(schema_editor.connection, _NEW)


class Migration(migrations.Migration):
    dependencies = [
        ("promotions", "0005_apply_lease"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditSeal",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("sequence", models.BigIntegerField(db_index=True)),
                ("hash", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField()),
                ("key_id", models.CharField(max_length=64)),
                ("mac", models.CharField(max_length=64)),
            ],
            options={
                "ordering": ["-id"],
            },
        ),
        migrations.AddField(
            model_name="auditchainhead",
            name="key_id",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
        migrations.AddField(
            model_name="auditchainhead",
            name="mac",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
        migrations.RunPython(install_triggers, remove_triggers),
    ]
