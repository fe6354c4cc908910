"""Every action the audit log records, in one place.

`log.record()` refuses any other, so an entry's action is always one the auditors' filter offers.
The database column stays a plain CharField: entries written before an action was retired keep
their value, and adding an action needs no migration.
"""

from __future__ import annotations

from django.db import models


class AuditAction(models.TextChoices):
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_VERIFIED = "audit.verified"
    AUTH_DENIED = "auth.denied"
    AUTH_LOCKED_OUT = "auth.locked_out"
    AUTH_LOGIN_FAILED = "auth.login_failed"
    AUTH_OIDC_REFUSED = "auth.oidc_refused"
    AUTH_SIGNED_IN = "auth.signed_in"
    PIPELINE_STOPPED = "pipeline.stopped"
    PROMOTION_APPLIED = "promotion.applied"
    PROMOTION_FAILED = "promotion.failed"
    REGISTRY_DRIFT = "registry.drift"
    REGISTRY_DRIFT_ACKNOWLEDGED = "registry.drift_acknowledged"
    REGISTRY_REVERTED = "registry.reverted"
    REGISTRY_REVERT_FAILED = "registry.revert_failed"
    REQUEST_APPROVED = "request.approved"
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_CREATED = "request.created"
    REQUEST_EMERGENCY = "request.emergency"
    REQUEST_ESCALATED = "request.escalated"
    REQUEST_EVIDENCE_CHANGED = "request.evidence_changed"
    REQUEST_EXPIRED = "request.expired"
    REQUEST_MANIFEST_FAILED = "request.manifest_failed"
    REQUEST_MANIFEST_RECORDED = "request.manifest_recorded"
    REQUEST_RELEASED = "request.released"
    REQUEST_REOPENED = "request.reopened"
    REQUEST_RESCHEDULED = "request.rescheduled"
    REQUEST_RETRIED = "request.retried"
    REQUEST_SCHEDULED = "request.scheduled"
    REVIEW_APPROVED = "review.approved"
    REVIEW_REJECTED = "review.rejected"
    REVIEW_RETROSPECTIVE = "review.retrospective"
    REVIEW_RETROSPECTIVE_COMPLETED = "review.retrospective_completed"
    REVIEW_RETROSPECTIVE_OVERDUE = "review.retrospective_overdue"
    SIGNATURE_REFUSED = "signature.refused"
    STAGE_CHANGED = "stage.changed"
    STAGE_CREATED = "stage.created"
    STAGE_DELETED = "stage.deleted"
    STAGE_FROZEN = "stage.frozen"
    STAGE_UNFROZEN = "stage.unfrozen"
    TOKEN_CREATED = "token.created"
    USER_ACTIVATED = "user.activated"
    USER_DEACTIVATED = "user.deactivated"
    USER_GROUP_ADDED = "user.group_added"
    USER_GROUP_REMOVED = "user.group_removed"
    USER_PROFILE_CHANGED = "user.profile_changed"
    TOKEN_REVOKED = "token.revoked"
    WEBHOOK_CHANGED = "webhook.changed"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_DELETED = "webhook.deleted"
