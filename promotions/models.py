"""Policy (stages), requests, reviews and the append-only audit log."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models.functions import Lower

from promotions.text import signature_line
from registry_sync.models import ModelVersion

# The longest justification or comment a person may write (forms, API and services agree).
MAX_TEXT = 10_000

# What a signer may say their signature means, unless the stage lists its own (21 CFR 11.50).
DEFAULT_SIGNATURE_MEANINGS = ["Approved for release", "Reviewed — technical", "Reviewed — quality"]
# A signed rejection means one thing only.
REJECTION_MEANING = "Rejected"


def default_signature_meanings() -> list[str]:
    return list(DEFAULT_SIGNATURE_MEANINGS)


LEGACY_STAGE_CHOICES = [
    ("", "(none: alias only)"),
    ("Staging", "Staging"),
    ("Production", "Production"),
    ("Archived", "Archived"),
    ("None", "None"),
]


class Stage(models.Model):
    name = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField(default=0, help_text="Order in the pipeline.")
    description = models.TextField(blank=True, default="")
    mlflow_stage = models.CharField(
        "MLflow stage", max_length=16, blank=True, default="", choices=LEGACY_STAGE_CHOICES
    )
    mlflow_alias = models.CharField(
        "MLflow alias", max_length=256, blank=True, default="", help_text="e.g. champion"
    )
    archive_existing = models.BooleanField(
        default=False, help_text="Archive the versions that hold the MLflow stage now."
    )
    allow_from_none = models.BooleanField(
        "may come from no stage",
        default=False,
        help_text="A version that holds no stage of the catalog may move here.",
    )
    allowed_from = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="+",
        help_text="Stages a version may come from. Leave empty, with the box above unticked, to allow any.",
    )
    required_approvals = models.PositiveSmallIntegerField(
        default=1, help_text="0 applies automatically once every check passes."
    )
    approver_groups = models.ManyToManyField(Group, blank=True, related_name="approvable_stages")
    checks = models.TextField(
        blank=True,
        default="",
        help_text="One rule a line: 'metric accuracy >= 0.9', 'tag validation == passed', "
        "'tag reviewed exists', 'evidence tests_passed == true'.",
    )
    request_ttl = models.DurationField("request TTL", default=timedelta(days=7))
    is_active = models.BooleanField(default=True)

    class Enforcement(models.TextChoices):
        DETECT = "detect", "Detect: flag a change made outside the workflow"
        REVERT = "revert", "Revert: undo a change made outside the workflow"

    enforcement = models.CharField(
        max_length=8,
        choices=Enforcement.choices,
        default=Enforcement.DETECT,
        help_text="What happens when the stage's MLflow binding changes without a request.",
    )
    signature_required = models.BooleanField(
        "signature required",
        default=False,
        help_text="Approving or rejecting needs the reviewer's password again and the meaning of "
        "the signature; the API refuses decisions on this stage.",
    )
    signature_meanings = models.JSONField(
        "signature meanings",
        default=default_signature_meanings,
        blank=True,
        help_text="What an approver's signature may mean, one a line. A rejection always means 'Rejected'.",
    )
    emergency_allowed = models.BooleanField(
        "emergency changes allowed",
        default=True,
        help_text="A stage admin may apply a pending request at once (break-glass), with a reason; the "
        "stage's approvers then review it retrospectively. The model files and the checks are still "
        "verified before the apply.",
    )

    window_time_zone = models.CharField(
        "time zone of the windows",
        max_length=64,
        blank=True,
        default="UTC",
        help_text="IANA name the deployment windows and freezes are shown in, e.g. Europe/Berlin "
        "(empty: UTC).",
    )
    deployment_windows = models.TextField(
        "deployment windows",
        blank=True,
        default="",
        help_text="One a line, e.g. 'Mon–Thu 09:00–16:00'. A request approved outside them waits as "
        "Scheduled and is applied when the next one opens. Empty: any time.",
    )

    escalate_after = models.DurationField(
        "escalate after",
        null=True,
        blank=True,
        help_text="A request pending longer than this is escalated to the stage admins (told once, "
        "then daily). Empty: never.",
    )
    independent_validation = models.BooleanField(
        "independent validators",
        default=False,
        help_text="No approver may be the version's author: its MLflow user, or its run's.",
    )

    class Meta:
        ordering = ["position", "name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="stage_name_ci_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def binding_label(self) -> str:
        parts = []
        if self.mlflow_stage:
            parts.append(f"stage {self.mlflow_stage}")
        if self.mlflow_alias:
            parts.append(f"alias @{self.mlflow_alias}")
        return " + ".join(parts)

    def check_rules(self) -> list[str]:
        return [line.strip() for line in self.checks.splitlines() if line.strip()]

    def approval_meanings(self) -> list[str]:
        return [m for m in (self.signature_meanings or []) if isinstance(m, str) and m.strip()] or list(
            DEFAULT_SIGNATURE_MEANINGS
        )


class Freeze(models.Model):
    """A period in which nothing is applied to the stage: filing and approving go on, applying waits."""

    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="freezes")
    starts_at = models.DateTimeField("from")
    ends_at = models.DateTimeField("until")
    reason = models.CharField(max_length=500)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_name = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["starts_at", "id"]
        indexes = [models.Index(fields=["stage", "ends_at"], name="freeze_stage_ends_idx")]

    def __str__(self) -> str:
        return f"{self.stage.name} frozen: {self.reason}"


# The longest risk tier a rule names; a model's tag longer than this matches no rule.
MAX_TIER = 64


class RiskTierRule(models.Model):
    """What a model of a risk tier (its registered-model tag, settings.RISK_TIER_TAG) needs on
    top of the stage's own rules: more approvals, one of them from a group, a signature."""

    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="risk_tier_rules")
    tier = models.CharField(
        max_length=MAX_TIER, help_text="The tag's value, e.g. high (compared trimmed, ignoring case)."
    )
    min_approvals = models.PositiveSmallIntegerField(
        "approvals at least", default=0, help_text="Raises the stage's count when it is higher."
    )
    required_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="At least one approval must come from a member of this group.",
    )
    signature_required = models.BooleanField("signature required", default=False)

    class Meta:
        ordering = ["stage", "tier"]
        constraints = [models.UniqueConstraint(fields=["stage", "tier"], name="one_rule_per_stage_tier")]

    def __str__(self) -> str:
        return f"{self.stage.name}: {self.tier}"


class ManifestState(models.TextChoices):
    NONE = "", "Not recorded"
    COMPUTING = "computing", "Computing"
    READY = "ready", "Recorded"
    FAILED = "failed", "Failed"


class PromotionRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        # Approved outside the stage's deployment windows or during a freeze: applied when it opens.
        SCHEDULED = "scheduled", "Scheduled"
        APPLYING = "applying", "Applying"
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"

    OPEN_STATUSES = (Status.PENDING, Status.APPROVED, Status.SCHEDULED, Status.APPLYING)
    # The statuses break-glass applies at once from: waiting for approvals, or for a window.
    EMERGENCY_FROM = (Status.PENDING, Status.SCHEDULED)

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="requests")
    stage = models.ForeignKey(Stage, on_delete=models.PROTECT, related_name="requests")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_name = models.CharField(max_length=300)
    justification = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Where the version stood when the request was filed ("None", "Staging", "@champion").
    source_stage = models.CharField(max_length=300, blank=True, default="")
    previous_holder = models.PositiveIntegerField(null=True, blank=True)
    evidence = models.JSONField(default=dict)
    evidence_sha256 = models.CharField(max_length=64)
    ci_evidence = models.JSONField(default=dict, blank=True)
    # Promote-through: once this request is applied, file the next step of the pipeline.
    then_stages = models.JSONField(default=list, blank=True)
    # The stage's approval count when the request was filed: a request is held to the stricter
    # of this and the stage's current count (lowering the policy cannot push it through).
    required_approvals_at_filing = models.PositiveIntegerField(null=True, blank=True)
    # Likewise the approver groups: a reviewer must be in them then and now (a group added to
    # the stage later does not let its members decide an open request).
    approver_groups_at_filing = models.ManyToManyField(Group, blank=True, related_name="+")
    # The model's risk tier when the request was filed ("" none) and the stage's rule for it then
    # ({"approvals", "group_id", "group", "signature"}, or None): a request is held to the
    # stricter of these and the rules for the model's current tier.
    risk_tier_at_filing = models.CharField(max_length=MAX_TIER, blank=True, default="")
    risk_rule_at_filing = models.JSONField(null=True, blank=True)
    check_results = models.JSONField(default=list)
    # Some check in check_results failed: kept beside them so that "Waiting for you" and its
    # count leave out, in SQL, the requests nobody can approve until their checks pass.
    checks_blocked = models.BooleanField(default=False)
    via = models.CharField(max_length=16, default="web")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Why the last attempt did not apply, as a sentence a reviewer understands; the library's
    # own text (redacted) beside it, for the page's collapsed Details.
    last_error = models.TextField(blank=True, default="")
    last_error_detail = models.TextField(blank=True, default="")
    # The apply attempt holding an applying request: a fresh token per claim, renewed while
    # the attempt works. Another attempt takes over only once the lease has expired, and every
    # MLflow write is fenced by the token, so a slow attempt is never applied twice.
    lease_token = models.CharField(max_length=32, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # What held the target when an attempt read MLflow, before its first write
    # ({"stage": [versions], "alias": [versions]}): a retry after a crash finds MLflow already
    # moved and records these instead of nobody.
    observed_holders = models.JSONField(null=True, blank=True)
    # The model's files as the worker found them after filing ({"files": [[path, size,
    # sha256]], "sha256", "bytes", "computed_at"}); their digest is in the evidence reviewers
    # approve, and the apply checks the files against it. No state: filed without a manifest
    # (before it existed, or with PROMOTION_MANIFEST_CHECK=off).
    manifest_state = models.CharField(max_length=10, choices=ManifestState.choices, blank=True, default="")
    manifest = models.JSONField(default=dict, blank=True)
    manifest_error = models.TextField(blank=True, default="")
    manifest_error_detail = models.TextField(blank=True, default="")
    manifest_enqueued_at = models.DateTimeField(null=True, blank=True)
    # A scheduled request: when the beat releases it to the worker, and why it waits, in words
    # ("Frozen until 12 Dec 18:00 CET: year-end close"); both empty once it is released.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    hold_reason = models.CharField(max_length=700, blank=True, default="")
    # Break-glass: a stage admin applied the request at once, skipping approvals (and, where they
    # exist, deployment windows), never the model files' or the catalog's checks. The stage's
    # approvers owe a retrospective review by review_due_at (services/emergency.py).
    emergency_at = models.DateTimeField(null=True, blank=True, db_index=True)
    emergency_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    emergency_by_name = models.CharField(max_length=300, blank=True, default="")
    emergency_reason = models.TextField(blank=True, default="")
    # The stage's approval count when the glass was broken (at least 1): the reviews owed.
    reviews_required = models.PositiveSmallIntegerField(default=0)
    review_due_at = models.DateTimeField(null=True, blank=True)
    review_completed_at = models.DateTimeField(null=True, blank=True)
    review_reminded_at = models.DateTimeField(null=True, blank=True)
    # Pending past the stage's escalate_after: when the stage admins were first told, and last
    # told (they are told again a day later while it still waits). Set by compare-and-set.
    escalated_at = models.DateTimeField(null=True, blank=True)
    last_escalation_at = models.DateTimeField(null=True, blank=True)
    # Every request one bulk filing made shares it: their e-mails go out as one digest per person.
    bulk_id = models.UUIDField(null=True, blank=True, db_index=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "stage"],
                condition=models.Q(status__in=["pending", "approved", "scheduled", "applying"]),
                name="one_open_request_per_version_stage",
            )
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="request_status_idx")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.version} → {self.stage.name}"

    @property
    def checks_passed(self) -> int:
        return sum(1 for result in self.check_results if result.get("passed"))

    @property
    def is_escalated(self) -> bool:
        """Still pending, and the stage admins have been told it waits too long."""
        return self.status == self.Status.PENDING and self.escalated_at is not None

    @property
    def is_emergency(self) -> bool:
        """Applied by break-glass: the one flag that lets a request past approvals (and windows)."""
        return self.emergency_at is not None

    def review_overdue(self, now) -> bool:
        return (
            self.is_emergency
            and self.review_completed_at is None
            and self.review_due_at is not None
            and self.review_due_at < now
        )


class RetrospectiveReview(models.Model):
    """An approver's look, after the fact, at a request applied by break-glass."""

    request = models.ForeignKey(
        PromotionRequest, on_delete=models.PROTECT, related_name="retrospective_reviews"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewer_name = models.CharField(max_length=300)
    comment = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "reviewer"], name="one_retrospective_review_per_reviewer"
            )
        ]

    def __str__(self) -> str:
        return f"{self.reviewer_name} reviewed #{self.request_id} retrospectively"


class Review(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    request = models.ForeignKey(PromotionRequest, on_delete=models.PROTECT, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewer_name = models.CharField(max_length=300)
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True, default="")
    evidence_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    stale = models.BooleanField(default=False)
    stale_reason = models.CharField(max_length=500, blank=True, default="")
    # The electronic signature, on stages that require one (signed_at is None: unsigned). What was
    # signed is signed_digest, the request's evidence digest at that moment; signature_seal is the
    # AUDIT_SIGNING_KEY MAC over the fields (audit.signing.review_signature_message), empty
    # without a key. The same record is in the review's audit entry, under the hash chain.
    signed_at = models.DateTimeField(null=True, blank=True)
    signer_username = models.CharField(max_length=150, blank=True, default="")
    signer_name = models.CharField(max_length=300, blank=True, default="")
    signed_meaning = models.CharField(max_length=200, blank=True, default="")
    signed_digest = models.CharField(max_length=64, blank=True, default="")
    signature_key_id = models.CharField(max_length=64, blank=True, default="")
    signature_seal = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "reviewer"],
                condition=models.Q(stale=False),
                name="one_live_review_per_reviewer",
            )
        ]

    def __str__(self) -> str:
        return f"{self.reviewer_name} {self.decision} #{self.request_id}"

    @property
    def is_signed(self) -> bool:
        return self.signed_at is not None

    @property
    def signature_line(self) -> str:
        if self.signed_at is None:
            return ""
        return signature_line(
            name=self.signer_name,
            username=self.signer_username,
            signed_at=self.signed_at,
            meaning=self.signed_meaning,
        )


class Profile(models.Model):
    """What the product knows of a person beyond Django's user: the name MLflow knows them by,
    when it is not their username (independent validators are compared with both)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="promotions_profile"
    )
    mlflow_user = models.CharField(
        "MLflow user",
        max_length=256,
        blank=True,
        default="",
        help_text="The user MLflow records on this person's runs and versions, if not their username.",
    )

    def __str__(self) -> str:
        return f"profile of {self.user}"


class SignatureNonce(models.Model):
    """A signed decision form's one-time nonce, once used: the same form posted again is refused."""

    nonce = models.CharField(max_length=64, unique=True)
    used_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.nonce


class AuditChainHead(models.Model):
    """One row: the last sequence number and hash. Locking it serialises appends.

    With AUDIT_SIGNING_KEY, `mac` is the key's MAC of (last_sequence, last_hash): a tail cut off
    with the head moved back to match cannot be given a MAC that checks. A trigger refuses to
    move the head backwards at all (audit/triggers.py).
    """

    last_sequence = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)
    # db_default too: the head is also written by raw SQL (the test harness's restore after a flush)
    key_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    mac = models.CharField(max_length=64, blank=True, default="", db_default="")

    def __str__(self) -> str:
        return f"audit head #{self.last_sequence}"


class AuditEvent(models.Model):
    sequence = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    # No foreign keys: the log keeps the actor even after the user is deleted, and the
    # database refuses the UPDATE an ON DELETE SET NULL would need.
    actor_id = models.IntegerField(null=True, blank=True)
    actor_username = models.CharField(max_length=150, blank=True, default="")
    actor_name = models.CharField(max_length=300, blank=True, default="")
    action = models.CharField(max_length=32, db_index=True)
    model_name = models.CharField(max_length=256, blank=True, default="", db_index=True)
    version = models.PositiveIntegerField(null=True, blank=True)
    from_stage = models.CharField(max_length=300, blank=True, default="")
    to_stage = models.CharField(max_length=300, blank=True, default="")
    request_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    meaning = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-sequence"]
        indexes = [models.Index(fields=["created_at"], name="audit_created_idx")]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action}"


class SignInFailureTally(models.Model):
    """Failed sign-ins per user name and address within the cool-off window.

    The audit log records the first failure of a window and the lock-out; the count of the
    rest is kept here, so anonymous traffic cannot grow the append-only log without bound.
    """

    username = models.CharField(max_length=150)
    ip_address = models.CharField(max_length=64)
    window_started_at = models.DateTimeField()
    failures = models.PositiveIntegerField(default=0)
    locked_out_recorded = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["username", "ip_address"], name="one_sign_in_tally_per_name_address"
            )
        ]

    def __str__(self) -> str:
        return f"{self.username}@{self.ip_address}: {self.failures}"


class AuditSeal(models.Model):
    """The chain head at one moment, under the signing key's MAC (audit.log.seal); append-only.

    A log rewritten with recomputed hashes no longer has, at a sealed sequence, the hash sealed
    there; one cut short no longer has the sealed sequence at all.
    """

    sequence = models.BigIntegerField(db_index=True)
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    key_id = models.CharField(max_length=64)
    mac = models.CharField(max_length=64)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"seal of #{self.sequence}"


class WorkerHeartbeat(models.Model):
    """Written by a Celery task: proves the broker→worker→database round trip."""

    marker = models.CharField(max_length=64, unique=True)
    worker = models.CharField(max_length=256, blank=True, default="")
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.marker} by {self.worker}"


# --- API tokens and outbound notifications ----------------------------------------------------


class ApiToken(models.Model):
    """A personal bearer token. Only its SHA-256 is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise the token.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


WEBHOOK_EVENTS = (
    "request.created",
    "request.escalated",
    "request.approved",
    "request.rejected",
    "request.cancelled",
    "request.expired",
    "promotion.applied",
    "promotion.failed",
    "promotion.emergency",
    "registry.drift",
    "registry.reverted",
    "registry.revert_failed",
)
# The events about a model's binding rather than a request (notifications.notify_registry).
REGISTRY_EVENTS = ("registry.drift", "registry.reverted", "registry.revert_failed")


class WebhookEndpoint(models.Model):
    """Where stage admins want events of the workflow posted (Slack, chat-ops, CI)."""

    name = models.CharField(max_length=100)
    url = models.URLField("URL", max_length=2000)
    secret = models.CharField(
        max_length=200, help_text="Signs every delivery (X-Promotion-Signature); share it with the receiver."
    )
    events = models.JSONField(default=list, blank=True, help_text="Events to send; empty sends none.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def wants(self, event: str) -> bool:
        return self.is_active and event in (self.events or [])


class OutboundDelivery(models.Model):
    """One event sent (or being sent) to one endpoint; retries keep the delivery id."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    request_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    delivery_id = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "outbound deliveries"
        indexes = [models.Index(fields=["status", "created_at"], name="delivery_status_idx")]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint} ({self.status})"


class OutboundEmail(models.Model):
    """One e-mail owed for an event or a policy change, recorded in the transaction that caused it.

    The row is the outbox: a broker that is down at commit or a worker that dies loses no e-mail
    (the sweeper publishes it again), and a row marked sent is never sent again.
    """

    class Kind(models.TextChoices):
        EVENT = "event", "Event of a request"
        POLICY_LOWERED = "policy_lowered", "Policy lowered"
        REGISTRY = "registry", "Change of a model's binding"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    # The arguments of the send, never the addresses: recipients are worked out when it is sent.
    payload = models.JSONField(default=dict)
    # A request's event and its bulk, copied from the payload and the request: the rows of one
    # (bulk, event) are claimed together and sent as one digest per recipient.
    event = models.CharField(max_length=40, blank=True, default="")
    bulk_id = models.UUIDField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Which attempt holds the row while sending: an attempt taken over writes nothing after.
    claim = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "outbound e-mail"
        indexes = [
            models.Index(fields=["status", "created_at"], name="email_status_idx"),
            models.Index(fields=["bulk_id", "event", "status"], name="email_bulk_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} e-mail #{self.pk} ({self.status})"


class DriftRevert(models.Model):
    """What the workflow does about one drift event: the record a revert acts on.

    Written with the drift event, in the sync's transaction, for every stage in the catalog
    the change touched: `holders_before` (who held the binding per the mirror before the
    change) is what a revert, and the page's Request revert, put back. In `revert` mode the row
    is the outbox of the worker's revert; `changes` lists the MLflow writes it makes, kept
    before the first one, so the next sync knows them as ours.
    """

    class Status(models.TextChoices):
        DETECTED = "detected", "Detected (the stage only flags drift)"
        PENDING = "pending", "Waiting for the worker"
        REVERTING = "reverting", "Reverting"
        REVERTED = "reverted", "Reverted"
        FAILED = "failed", "Revert failed"
        SUPERSEDED = "superseded", "Superseded by a request applied since"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"

    drift_event = models.OneToOneField(
        "registry_sync.DriftEvent", on_delete=models.PROTECT, related_name="revert"
    )
    status = models.CharField(max_length=16, choices=Status.choices)
    # The catalog stages the change touched, by name, and the ones in revert mode among them.
    stages = models.JSONField(default=list, blank=True)
    # Legacy stage name -> versions that held it before the change; {"@alias": [version]} for an alias.
    holders_before = models.JSONField(default=dict, blank=True)
    # Where the changed version stood before ("None", "Staging", ...) for a stage change.
    version_stage_before = models.CharField(max_length=32, blank=True, default="")
    changes = models.JSONField(default=list, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_error_detail = models.TextField(blank=True, default="")  # MLflow's own text, redacted
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Not before: a revert waiting for an apply's lease, or for MLflow, is retried at this time.
    not_before = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "updated_at"], name="drift_revert_status_idx")]

    def __str__(self) -> str:
        return f"revert of drift #{self.drift_event_id} ({self.status})"


class SsoIdentity(models.Model):
    """A user who signs in through the company's OpenID Connect provider (promotions/identity):
    the provider's issuer and subject name the person, whatever their user name becomes. Users
    without one sign in with a local password."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity"
    )
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)
    # The provider's groups at the last sign-in or refresh, as it sent them (roles come from these).
    last_groups = models.JSONField(default=list, blank=True)
    # Deactivated because the provider stopped vouching for the person (not by an administrator):
    # a later sign-in the provider does vouch for activates the account again.
    deactivated_by_provider = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_unique_subject")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"
