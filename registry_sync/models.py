"""A mirror of the MLflow model registry.

MLflow stays the source of truth. The mirror makes pages fast, keeps history when a version
vanishes from MLflow, and lets the sync notice changes nobody asked this product for (drift).
"""

from __future__ import annotations

from django.db import models


class RegisteredModel(models.Model):
    name = models.CharField(max_length=256, unique=True)
    description = models.TextField(blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    # alias -> version number, as MLflow reports it on the registered model
    aliases = models.JSONField(default=dict, blank=True)
    creation_timestamp = models.BigIntegerField(null=True, blank=True)
    last_updated_timestamp = models.BigIntegerField(null=True, blank=True)
    is_deleted = models.BooleanField(default=False)
    has_drift = models.BooleanField(default=False)
    last_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    current_stage = models.CharField(max_length=32, default="None")
    aliases = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=32, blank=True, default="")
    run_id = models.CharField(max_length=64, blank=True, default="")
    source = models.TextField(blank=True, default="")
    description = models.TextField(blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    # Who made the version: MLflow's user_id on the version, and the run's user (its
    # mlflow.user tag, else the run's user_id). Stages with independent validators compare
    # approvers with both.
    user_id = models.CharField(max_length=256, blank=True, default="")
    run_user = models.CharField(max_length=256, blank=True, default="")
    creation_timestamp = models.BigIntegerField(null=True, blank=True)
    last_updated_timestamp = models.BigIntegerField(null=True, blank=True)
    is_deleted = models.BooleanField(default=False)
    last_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model__name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_model_version"),
        ]
        indexes = [models.Index(fields=["model", "current_stage"], name="version_stage_idx")]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class SyncRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        COMMAND = "command", "Command"
        WEBHOOK = "webhook", "Webhook"
        REQUEST = "request", "Request"
        APPLY = "apply", "Apply"
        DELTA = "delta", "Delta poll"

    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    scope = models.CharField(max_length=256, blank=True, default="", help_text="model name, or empty for all")
    full = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    models_seen = models.PositiveIntegerField(default=0)
    versions_seen = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    deleted = models.PositiveIntegerField(default=0)
    drift = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")

    # Not stored: the mirror versions a sync changed, set on the run sync_registry returns.
    changed_version_ids: frozenset[int] = frozenset()

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"sync {self.scope or 'all'} at {self.started_at:%Y-%m-%d %H:%M:%S}"

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class DriftEvent(models.Model):
    class Kind(models.TextChoices):
        STAGE = "stage", "Stage"
        ALIAS = "alias", "Alias"

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="drift_events")
    version = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    alias = models.CharField(max_length=256, blank=True, default="")
    before = models.CharField(max_length=256, blank=True, default="")
    after = models.CharField(max_length=256, blank=True, default="")
    detected_at = models.DateTimeField()
    mlflow_timestamp = models.BigIntegerField(null=True, blank=True)
    resolved = models.BooleanField(default=False)

    class Meta:
        ordering = ["-detected_at", "-id"]

    def __str__(self) -> str:
        return f"{self.model.name}: {self.describe()}"

    def describe(self) -> str:
        if self.kind == self.Kind.STAGE:
            return f"v{self.version} moved from {self.before} to {self.after} in MLflow without a request"
        before = f"v{self.before}" if self.before else "nobody"
        after = f"v{self.after}" if self.after else "nobody"
        return f"@{self.alias} moved from {before} to {after} in MLflow without a request"


class WebhookDelivery(models.Model):
    """Delivery ids already accepted, so a replayed webhook is refused."""

    delivery_id = models.CharField(max_length=128, unique=True)
    received_at = models.DateTimeField()
    event = models.CharField(max_length=64, blank=True, default="")
    model_name = models.CharField(max_length=256, blank=True, default="")

    def __str__(self) -> str:
        return self.delivery_id


class SyncWatermark(models.Model):
    """How far the delta poll has read MLflow's version updates (services.sync_delta).

    `last_updated_timestamp` is MLflow's own clock (milliseconds): the newest
    `last_updated_timestamp` among the versions the poll has written to the mirror. It only
    moves forward, and only after those versions are written.
    """

    name = models.CharField(max_length=64, unique=True)
    last_updated_timestamp = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_updated_timestamp}"


class PendingRefresh(models.Model):
    """A webhook-triggered refresh of one model, queued or running (registry_sync.refresh).

    At most one row per model: a webhook for a model whose refresh is queued enqueues nothing,
    one for a model whose refresh is running marks `again`, and the running refresh then queues
    exactly one more when it ends. A storm of events for one model thus costs at most one
    queued and one running refresh at any moment.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"

    model_name = models.CharField(max_length=256, unique=True)
    state = models.CharField(max_length=8, choices=State.choices)
    again = models.BooleanField(default=False)
    # Set by the task that claimed the row: its end is the only one that may finish it.
    claim = models.CharField(max_length=32, blank=True, default="")
    changed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.model_name}: {self.state}"


class VersionModelFiles(models.Model):
    """What a version's MLmodel file and requirements say, read once from MLflow.

    A version's artifacts do not change under its number, so the row, once written, is reused
    and never refreshed; a read that failed writes nothing (the next page view tries again).
    The run's name is kept with it: MLflow lets it be renamed, but rarely, and the page shows it
    beside the version's own description, which the sync keeps current on ModelVersion.
    """

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="model_files")
    flavors = models.JSONField(default=dict, blank=True)
    # Column specs as MLflow writes them; null when the version was logged without a signature.
    inputs = models.JSONField(null=True, blank=True)
    outputs = models.JSONField(null=True, blank=True)
    python_version = models.CharField(max_length=64, blank=True, default="")
    mlflow_version = models.CharField(max_length=64, blank=True, default="")
    # requirements.txt lines; null when the model carries no requirements.txt
    requirements = models.JSONField(null=True, blank=True)
    run_name = models.CharField(max_length=256, blank=True, default="")
    experiment_id = models.CharField(max_length=64, blank=True, default="")
    fetched_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"model files of version #{self.version_id}"

    @property
    def has_signature(self) -> bool:
        return self.inputs is not None or self.outputs is not None
