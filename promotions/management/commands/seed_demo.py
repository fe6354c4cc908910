"""Seed a local MLflow server and the database with demo models and demo users (once).

The demo users share a published password, and two of them are enough to approve a Production
promotion: this command is for `make run` (DEBUG on) and refuses a production configuration
unless told, in so many words, that a demo on production settings is meant.
"""

from __future__ import annotations

import json
import random

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.management.base import BaseCommand, CommandError

from promotions import audit, roles
from registry_sync import gateway
from registry_sync.models import SyncRun
from registry_sync.services import SyncFailed, format_summary, sync_registry, wait_for_registry

DEMO_PASSWORD = "promote-demo"
DEMO_USERS = [
    # username, first, last, role
    ("riley", "Riley", "Requester", roles.REQUESTERS),
    ("rex", "Rex", "Reviewer", roles.REVIEWERS),
    ("rita", "Rita", "Reviewer", roles.REVIEWERS),
    ("sam", "Sam", "Stage-Admin", roles.STAGE_ADMINS),
    ("alice", "Alice", "Auditor", roles.AUDITORS),
]

DEMO_MODELS = {
    "sales_forecast": {
        "description": "Weekly sales forecast per store.",
        "metrics": {"accuracy": (0.86, 0.012), "rmse": (15.0, -0.7)},
        "params": {"max_depth": [6, 8, 8, 10, 10], "learning_rate": [0.1, 0.1, 0.05, 0.05, 0.03]},
        "versions": 5,
        "stages": {3: "Production", 4: "Staging"},
        "aliases": {"champion": 3},
    },
    "churn_classifier": {
        "description": "Probability that a subscriber cancels within 30 days.",
        "metrics": {"auc": (0.81, 0.015), "f1": (0.62, 0.02)},
        "params": {
            "n_estimators": [100, 200, 300, 300],
            "class_weight": ["none", "balanced", "balanced", "balanced"],
        },
        "versions": 4,
        "stages": {2: "Production", 3: "Staging"},
        "aliases": {},
    },
    "fraud_detector": {
        "description": "Scores card transactions for fraud.",
        "metrics": {"precision": (0.9, 0.01), "recall": (0.7, 0.03)},
        "params": {"threshold": [0.5, 0.6, 0.65], "model": ["xgboost", "xgboost", "lightgbm"]},
        "versions": 3,
        "stages": {1: "Production"},
        "aliases": {"champion": 1},
    },
}


# The columns each demo model's signature takes, and from which version on: the request page
# then shows a column added (v3 of sales_forecast) and a breaking type change (its v5).
DEMO_INPUTS = {
    "sales_forecast": [
        ("store_id", "long", 1),
        ("week", "long", 1),
        ("price", "double", 1),
        ("promo_flag", "boolean", 3),
    ],
    "churn_classifier": [("tenure_months", "long", 1), ("plan", "string", 1), ("support_calls", "long", 2)],
    "fraud_detector": [("amount", "double", 1), ("merchant_category", "string", 1), ("hour", "long", 1)],
}


def demo_model_files(name: str, number: int, rng: random.Random) -> dict[str, bytes]:
    """A small but real MLflow model directory for a demo version: MLmodel with a signature,
    requirements, and a model file of a few kilobytes (its bytes are what approvals bind)."""
    inputs = [
        {
            "name": column,
            # v5 of sales_forecast reads store ids as strings: a breaking change to review.
            "type": "string" if (name, column, number) == ("sales_forecast", "store_id", 5) else kind,
            "required": True,
        }
        for column, kind, since in DEMO_INPUTS[name]
        if number >= since
    ]
    sklearn = "1.5.2" if number < 3 else "1.6.1"
    mlmodel = "\n".join(
        [
            "artifact_path: model",
            "flavors:",
            "  python_function:",
            "    env:",
            "      virtualenv: python_env.yaml",
            "    loader_module: mlflow.sklearn",
            "    model_path: model.pkl",
            "    predict_fn: predict",
            "    python_version: 3.11.7",
            "  sklearn:",
            "    pickled_model: model.pkl",
            "    serialization_format: cloudpickle",
            f"    sklearn_version: {sklearn}",
            "mlflow_version: 3.17.2",
            "signature:",
            f"  inputs: '{json.dumps(inputs)}'",
            """  outputs: '[{"type": "double", "required": true}]'""",
            "",
        ]
    )
    return {
        "MLmodel": mlmodel.encode(),
        "requirements.txt": f"mlflow==3.17.2\nscikit-learn=={sklearn}\ncloudpickle==3.1.1\n".encode(),
        "python_env.yaml": b"python: 3.11.7\ndependencies:\n- -r requirements.txt\n",
        "model.pkl": rng.randbytes(4096 + 512 * number),
    }


class Command(BaseCommand):
    help = "Seed MLflow with demo models and create demo users for the four roles (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=0, help="Seconds to wait for MLflow to answer.")
        parser.add_argument("--skip-mlflow", action="store_true", help="Only create the demo users.")
        parser.add_argument(
            "--demo-on-production",
            action="store_true",
            help="Seed even with DEBUG off: creates accounts with a published password.",
        )

    @audit.acting_from_cli()
    def handle(self, *args, **options):
        if not settings.DEBUG and not options["demo_on_production"]:
            raise CommandError(
                "seed_demo creates accounts with the published password "
                f"'{DEMO_PASSWORD}' and runs only with DEBUG=true (make run). "
                "Pass --demo-on-production to seed a production configuration anyway."
            )
        self._users()
        if options["skip_mlflow"]:
            return
        try:
            if options["wait"]:
                wait_for_registry(options["wait"])
            self._registry()
        except gateway.RegistryError as exc:
            raise CommandError(f"MLflow at {gateway.tracking_uri()} is not usable: {exc}") from None
        try:
            run = sync_registry(trigger=SyncRun.Trigger.COMMAND)
        except SyncFailed as exc:
            raise CommandError(f"Sync failed: {exc}") from None
        self.stdout.write(f"Synced the registry: {format_summary(run)}")

    def _users(self) -> None:
        stage_perms = Permission.objects.filter(
            content_type__app_label="promotions", codename__endswith="_stage"
        )
        lines = []
        for username, first, last, role in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"first_name": first, "last_name": last, "email": f"{username}@example.com"},
            )
            if not created:
                # Whoever holds this name (a demo user from an earlier run, or a real person)
                # keeps the password and roles they have: seeding never grants a role.
                held = ", ".join(user.groups.values_list("name", flat=True)) or "no role"
                lines.append(f"  {username:<6} {held:<13} (existed already; left as it is)")
                continue
            user.set_password(DEMO_PASSWORD)
            if role == roles.STAGE_ADMINS:
                user.is_staff = True
            user.save()
            if role == roles.STAGE_ADMINS:
                user.user_permissions.set(stage_perms)
            user.groups.add(Group.objects.get(name=role))
            lines.append(f"  {username:<6} {role:<13} password: {DEMO_PASSWORD}")
        self.stdout.write("Demo users (sign in at http://127.0.0.1:8000/accounts/login/):")
        self.stdout.write("\n".join(lines))

    def _registry(self) -> None:
        if gateway.registered_model_exists("sales_forecast"):
            self.stdout.write("Demo models already in MLflow; nothing to seed.")
            return
        rng = random.Random(7)
        for name, spec in DEMO_MODELS.items():
            gateway.create_registered_model(name, description=spec["description"], tags={"team": "demo"})
            for number in range(1, spec["versions"] + 1):
                metrics = {
                    key: round(base + step * (number - 1) + rng.uniform(-0.004, 0.004), 4)
                    for key, (base, step) in spec["metrics"].items()
                }
                params = {key: str(values[number - 1]) for key, values in spec["params"].items()}
                tags = {"validation": "passed" if number != 2 else "failed"}
                run_id = gateway.create_run(f"{name}-training", metrics=metrics, params=params)
                gateway.log_run_files(run_id, demo_model_files(name, number, rng))
                gateway.create_model_version(
                    name, run_id=run_id, tags=tags, description=f"Training run {number}"
                )
            for number, stage in spec["stages"].items():
                gateway.transition_stage(name, number, stage, archive_existing=False)
            for alias, number in spec["aliases"].items():
                gateway.set_alias(name, alias, number)
            self.stdout.write(f"Seeded {name} with {spec['versions']} versions.")
