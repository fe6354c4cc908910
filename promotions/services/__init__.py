"""Every write of the promotion workflow, one module a job; this face hands their names on."""

from promotions.services.applying import (
    apply_retry_scheduled,
    promotion_apply,
    requests_sweep,
    retry_delay,
)
from promotions.services.decisions import (
    request_cancel,
    request_retry,
    requests_expire,
    review_approve,
    review_reject,
)
from promotions.services.emergency import (
    request_break_glass,
    retrospective_review_give,
    retrospective_reviews_remind,
)
from promotions.services.escalation import request_escalate, requests_escalate
from promotions.services.evidence import build_evidence, requests_refresh_evidence
from promotions.services.filing import (
    pipeline_continue,
    promotion_request_create,
    promotion_request_create_through,
    promotion_request_file,
    promotion_requests_create_passing,
    requester_required,
    version_get,
)
from promotions.services.lifecycle import enqueue_apply
from promotions.services.manifest import manifests_sweep, request_manifest_compute

__all__ = [
    "apply_retry_scheduled",
    "build_evidence",
    "enqueue_apply",
    "manifests_sweep",
    "pipeline_continue",
    "promotion_apply",
    "promotion_request_create",
    "promotion_request_create_through",
    "promotion_request_file",
    "promotion_requests_create_passing",
    "request_break_glass",
    "request_cancel",
    "request_escalate",
    "request_manifest_compute",
    "request_retry",
    "requester_required",
    "requests_escalate",
    "requests_expire",
    "requests_refresh_evidence",
    "requests_sweep",
    "retrospective_review_give",
    "retrospective_reviews_remind",
    "retry_delay",
    "review_approve",
    "review_reject",
    "version_get",
]
