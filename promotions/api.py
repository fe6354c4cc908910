"""The JSON API at /api/ (django-ninja): CI pipelines file requests and watch them.

Authentication is a personal bearer token only (`Authorization: Bearer prm_…`): no session, so
no CSRF to forge, and every call acts as the token's user with that user's roles. Every write
goes through the same services as the pages; the API only parses, calls and renders.

Errors are `{"code", "message"}` (plus `errors` for field errors): 401 no or bad token, 403 a
valid token without the role (`signature_required` for a decision on a stage that requires an
electronic signature: those are made on the request page, with the password; `not_independent`
for a decision by the version's author on a stage with independent validators), 404 unknown ids
(only ever after the role check, so existence never leaks), 409 already decided or duplicate,
413 body too large, 422 malformed or invalid, 503 `registry_unavailable` when filing cannot ask
MLflow (nothing filed; try again later).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern, URLResolver, path
from django.utils import timezone
from ninja import Field, NinjaAPI, Path, Query, Schema, Status, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import ConfigDict, field_validator

from common import log_context
from promotions import audit, catalog, error_pages, history, policy, selectors, services, tokens
from promotions.audit.filters import FilterError, parse_filter
from promotions.errors import PromotionError
from promotions.models import MAX_TEXT, AuditEvent, PromotionRequest, Review, Stage
from promotions.notifications import request_url
from registry_sync.models import ModelVersion, RegisteredModel

MAX_ID = 2**53  # the largest integer every JSON client reads exactly
MAX_EVIDENCE_BYTES = 64 * 1024
MAX_DEPTH = 20
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL stores no NUL character in text


# --- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, errors: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


class FieldErrorOut(Schema):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(Schema):
    code: str = Field(examples=["unknown_stage"])
    message: str
    errors: list[FieldErrorOut] = Field(default_factory=list)
    request_id: int | None = Field(
        default=None,
        description="The request the refusal is about: the open one a duplicate (409 `duplicate`) "
        "would have repeated, or the applied one through which the version already holds the stage "
        "(422 `already_holds`).",
    )


def _errors(*statuses: int) -> dict[int, type[ErrorOut]]:
    return dict.fromkeys((401, 403, 422, *statuses), ErrorOut)


# --- parsing ----------------------------------------------------------------------------------


class StrictJsonParser(Parser):
    """JSON as RFC 8259 has it, and as both databases can store: no NaN or Infinity, no NUL
    or lone surrogates in strings, integers within 64 bits, bounded nesting."""

    def parse_body(self, request):
        data = json.loads(request.body, parse_constant=_refuse_constant, parse_float=_finite_float)
        _check_value(data, depth=0)
        return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _check_value(value: Any, *, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        return
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError("an integer is out of the 64-bit range")
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth=depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_value(item, depth=depth + 1)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("a string contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string contains a lone surrogate") from None


# --- authentication ---------------------------------------------------------------------------


class BearerToken(HttpBearer):
    def authenticate(self, request, token: str):
        found = tokens.token_authenticate(token.strip())
        if found is None:
            raise ApiError(401, "invalid_token", "The token is unknown or revoked.")
        request.api_token = found
        audit.acting_through_token(found)
        return found.user


api = NinjaAPI(
    title="Promotions API",
    version="1",
    description=(
        "File promotion requests for MLflow model versions, decide them, and watch them get applied. "
        "Authenticate with a personal token: `Authorization: Bearer <token>` (create one under "
        "API tokens in the web app, or `manage.py create_api_token USERNAME`)."
    ),
    auth=BearerToken(),
    parser=StrictJsonParser(),
    urls_namespace="api",
    docs=Swagger(settings={"persistAuthorization": False, "tryItOutEnabled": False}),
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def _error(
    request,
    status: int,
    code: str,
    message: str,
    errors: list | None = None,
    *,
    request_id: int | None = None,
):
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    if request_id is not None:
        body["request_id"] = request_id
    response = api.create_response(request, body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="promotions"'
    return response


@api.exception_handler(ApiError)
def _on_api_error(request, exc: ApiError):
    return _error(request, exc.status, exc.code, exc.message, exc.errors)


@api.exception_handler(PromotionError)
def _on_refusal(request, exc: PromotionError):
    return _error(request, exc.http_status, exc.code, exc.message, request_id=exc.request_id)


@api.exception_handler(AuthenticationError)
def _on_no_token(request, exc: AuthenticationError):
    return _error(request, 401, "unauthenticated", "Send a token: Authorization: Bearer <token>.")


@api.exception_handler(ValidationError)
def _on_invalid(request, exc: ValidationError):
    errors = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors
    ]
    summary = "; ".join(f"{'.'.join(map(str, e['loc'][1:] or e['loc']))}: {e['msg']}" for e in errors[:5])
    return _error(request, 422, "invalid", f"The request is not valid: {summary}", errors)


@api.exception_handler(HttpError)
def _on_http_error(request, exc: HttpError):
    if exc.status_code == 400 and exc.__cause__ is not None:
        # Raised by ninja around our parser: the body is not JSON we accept.
        reason = exc.__cause__
        if isinstance(reason, RequestDataTooBig):
            return _on_too_big(request, reason)
        return _error(request, 422, "malformed_json", f"The body is not valid JSON: {reason}")
    return _error(request, exc.status_code, "error", exc.message)


@api.exception_handler(RequestDataTooBig)
def _on_too_big(request, exc):
    return _error(request, 413, "too_large", "The body is too large.")


@api.exception_handler(Http404)
def _on_not_found(request, exc):
    return _error(request, 404, "not_found", "Not found.")


def _refuse_unknown_query(operation):
    """Query parameters, like body fields, are exactly the documented ones: a misspelt filter
    is an error, not a silently broader answer."""
    known = set(inspect.signature(operation).parameters) - {"request"}

    @functools.wraps(operation)
    def checked(request, *args, **kwargs):
        unknown = sorted(set(request.GET) - known)
        if unknown:
            errors = [
                {"loc": ["query", name], "msg": "Unknown parameter", "type": "extra_forbidden"}
                for name in unknown
            ]
            shown = ", ".join(repr(name[:40]) for name in unknown[:5])
            raise ApiError(422, "invalid", f"Unknown query parameter(s): {shown}.", errors)
        return operation(request, *args, **kwargs)

    return checked


api.add_decorator(_refuse_unknown_query)


# --- who may ----------------------------------------------------------------------------------


def _user(request):
    return request.auth


def _require_role(request) -> None:
    """Any role of the product reads requests, stages and models; others get 403 for every id,
    existing or not."""
    if not policy.has_any_role(_user(request)):
        raise ApiError(403, "forbidden", "Your account has no role in this application; ask an admin.")


def _get_request_for_user(request, request_id: int) -> PromotionRequest:
    log_context.bind_promotion_request(request_id)
    _require_role(request)
    promotion = selectors.request_page(request_id)
    if promotion is None:
        raise ApiError(404, "not_found", f"No request #{request_id}.")
    return promotion


# --- schemas ----------------------------------------------------------------------------------


class StrictIn(Schema):
    """Bodies: exactly the documented fields, with exactly their types. Times and users are
    the server's to decide, so a body that names them is refused, not silently trimmed."""

    model_config = ConfigDict(extra="forbid", strict=True)


Text = Annotated[str, Field(pattern=_NO_NUL)]


def _evidence_size(value: dict[str, Any]) -> dict[str, Any]:
    if len(audit.canonical_json(value).encode()) > MAX_EVIDENCE_BYTES:
        raise ValueError(f"evidence is larger than {MAX_EVIDENCE_BYTES // 1024} KiB")
    return value


class RequestIn(StrictIn):
    model_name: str = Field(min_length=1, max_length=256, pattern=_NO_NUL, examples=["sales_forecast"])
    version: int = Field(ge=1, le=2**31 - 1, examples=[5])
    stage: str = Field(min_length=1, max_length=64, pattern=_NO_NUL, examples=["Production"])
    justification: str = Field(min_length=1, max_length=MAX_TEXT, pattern=_NO_NUL)
    evidence: dict[str, Any] = Field(
        default_factory=dict,
        description="CI evidence (run URL, commit, test results…). Stage checks read it as "
        "`evidence <key> <op> <value>`.",
        examples=[{"tests_passed": True, "coverage": 0.87, "ci_run": "https://ci.example/run/42"}],
    )

    _evidence = field_validator("evidence")(_evidence_size)


class DecisionIn(StrictIn):
    comment: str = Field(default="", max_length=MAX_TEXT, pattern=_NO_NUL)
    evidence_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Approve only if the evidence snapshot still has this digest.",
    )


class EmergencyIn(StrictIn):
    reason: str = Field(
        max_length=MAX_TEXT, pattern=_NO_NUL, description="Why the change cannot wait for its approvals."
    )


class RetrospectiveIn(StrictIn):
    comment: str = Field(max_length=MAX_TEXT, pattern=_NO_NUL)


class BulkIn(StrictIn):
    stage: str = Field(min_length=1, max_length=64, pattern=_NO_NUL, examples=["Staging"])
    justification: str = Field(min_length=1, max_length=MAX_TEXT, pattern=_NO_NUL)
    models: list[Annotated[str, Field(min_length=1, max_length=256, pattern=_NO_NUL)]] | None = Field(
        default=None, max_length=1000, description="Model names to consider; all models when omitted."
    )
    evidence: dict[str, Any] = Field(default_factory=dict, description="Applied to every request filed.")

    _evidence = field_validator("evidence")(_evidence_size)


class CheckOut(Schema):
    rule: str
    passed: bool
    actual: str
    message: str


class SignatureOut(Schema):
    name: str = Field(description="The signer's full name when they signed.")
    username: str
    signed_at: datetime = Field(description="UTC.")
    meaning: str = Field(examples=["Approved for release"])
    digest: str = Field(description="The request's evidence_sha256 that was signed.")


class ReviewOut(Schema):
    reviewer: str
    decision: Literal["approve", "reject"]
    comment: str
    created_at: datetime
    stale: bool
    signature: SignatureOut | None = Field(
        description="The reviewer's electronic signature, on stages that require one; null otherwise."
    )


class ArtifactsOut(Schema):
    state: Literal["none", "computing", "recorded", "failed"] = Field(
        description="none: filed without a manifest; computing: approval waits for it; "
        "failed: approval impossible (see error)."
    )
    sha256: str | None = Field(description="The manifest digest the evidence and the approvals cover.")
    files: int | None
    bytes: int | None
    error: str


class RetrospectiveReviewOut(Schema):
    reviewer: str
    comment: str
    created_at: datetime


class EmergencyOut(Schema):
    by: str = Field(description="The stage admin who applied the request at once.")
    at: datetime
    reason: str
    reviews_required: int
    review_due_at: datetime
    review_completed_at: datetime | None
    review_overdue: bool
    reviews: list[RetrospectiveReviewOut]


class RequestOut(Schema):
    id: int
    status: Literal[tuple(PromotionRequest.Status.values)]  # type: ignore[valid-type]
    model_name: str
    version: int
    stage: str
    source_stage: str
    previous_holder: int | None
    requested_by: str
    justification: str
    via: str
    approvals: int
    required_approvals: int
    checks: list[CheckOut]
    evidence: dict[str, Any]
    evidence_sha256: str
    artifacts: ArtifactsOut
    then_stages: list[str]
    last_error: str
    attempts: int = Field(description="Apply attempts made so far.")
    next_attempt_at: datetime | None = Field(
        description="When the worker tries to apply again after MLflow could not be reached; null otherwise."
    )
    scheduled_for: datetime | None = Field(
        description="A scheduled request: when the worker applies it (UTC), once the stage's next "
        "deployment window opens or its freeze ends; null otherwise."
    )
    hold: str = Field(
        description="A scheduled request: why it waits and when it applies, in words ('Frozen until "
        "12 Dec 18:00 CET: year-end close. Applies at Mon 09:00 CET (in 3 days).'); empty otherwise."
    )
    reviews: list[ReviewOut]
    risk_tier: str = Field(description="The model's risk tier now, '' for none (see rules).")
    rules: RulesOut
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    escalated_at: datetime | None = Field(
        description="When the stage admins were first told the request waits too long; null if never."
    )
    decided_at: datetime | None
    applied_at: datetime | None
    emergency: EmergencyOut | None = Field(
        description="Set when a stage admin applied the request at once (break-glass), with its "
        "retrospective review."
    )
    url: str


class RulesOut(Schema):
    tier: str = Field(description="The model's risk tier now (its registered-model tag), '' for none.")
    tier_at_filing: str = Field(description="The model's risk tier when the request was filed.")
    approvals: int = Field(description="Approvals needed: the stricter of the stage's and the tiers' rules.")
    required_groups: list[str] = Field(
        description="Groups from each of which at least one approval must come."
    )
    signature_required: bool = Field(description="Decisions need an electronic signature (on the page).")
    summary: str = Field(description="The rules in force in words.")
    sentences: list[str] = Field(description="Where each part of the rules comes from, in words.")


class RequestPageOut(Schema):
    count: int
    items: list[RequestOut]


class SkippedOut(Schema):
    model_name: str
    version: int | None
    reason: str


class RefusedOut(Schema):
    model_name: str
    version: int
    code: str
    message: str


class BulkOut(Schema):
    stage: str
    filed: list[RequestOut]
    skipped: list[SkippedOut]
    refused: list[RefusedOut]


class TierRuleOut(Schema):
    tier: str
    min_approvals: int
    required_group: str | None
    signature_required: bool
    summary: str = Field(description="The rule in words, as the stages page states it.")


class FreezeOut(Schema):
    starts_at: datetime
    ends_at: datetime
    reason: str
    in_force: bool = Field(description="The freeze holds applies to the stage now.")


class StageOut(Schema):
    name: str
    position: int
    description: str
    mlflow_stage: str
    mlflow_alias: str
    archive_existing: bool
    allow_from_none: bool
    allowed_from: list[str]
    required_approvals: int
    approver_groups: list[str]
    checks: list[str]
    request_ttl_seconds: int
    is_active: bool
    enforcement: str
    signature_required: bool = Field(description="Decisions need an electronic signature (on the page).")
    signature_meanings: list[str]
    window_time_zone: str = Field(description="IANA time zone the deployment windows are read in.")
    deployment_windows: list[str] = Field(
        description="Weekly windows ('Mon–Thu 09:00–16:00') in which approved requests are applied; "
        "empty: any time."
    )
    emergency_allowed: bool = Field(
        description="Stage admins may apply a pending request at once (POST /requests/{id}/emergency)."
    )
    escalate_after_seconds: int | None = Field(
        description="A request pending longer is escalated to the stage admins; null: never."
    )
    independent_validation: bool = Field(description="No approver may be the version's author.")
    risk_tiers: list[TierRuleOut] = Field(description="What a model's risk tier adds to this stage's rules.")
    freezes: list[FreezeOut] = Field(
        description="Freezes in force or still to come: approved requests wait until they end."
    )


class VersionOut(Schema):
    version: int
    current_stage: str
    aliases: list[str]
    stages: list[str] = Field(description="Catalog stages this version holds.")
    status: str
    run_id: str
    source: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    is_deleted: bool
    creation_timestamp: int | None


class ModelOut(Schema):
    name: str
    description: str
    is_deleted: bool
    has_drift: bool
    aliases: dict[str, int]
    stage_holders: dict[str, list[int]] = Field(description="Catalog stage → versions that hold it.")
    version_count: int
    versions: list[VersionOut]


class AuditEventOut(Schema):
    sequence: int
    # Text, not a datetime: the JSON encoder would round it to milliseconds, and the hash covers
    # this exact spelling (format.utc_iso), so a client can recompute every entry's hash.
    created_at: str = Field(
        description="UTC, microseconds, exactly as hashed: 2026-03-01T09:00:00.123456+00:00"
    )
    actor_username: str
    actor_name: str
    action: str
    model_name: str
    version: int | None
    from_stage: str
    to_stage: str
    request_id: int | None
    meaning: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPageOut(Schema):
    items: list[AuditEventOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null at the end.")


# --- rendering --------------------------------------------------------------------------------


def _request_out(promotion: PromotionRequest) -> dict[str, Any]:
    reviews = list(promotion.reviews.all())
    retry = selectors.apply_retry(promotion)
    hold = selectors.request_hold(promotion)
    rules = policy.rules_in_force(promotion)
    return {
        "id": promotion.pk,
        "status": promotion.status,
        "model_name": promotion.version.model.name,
        "version": promotion.version.version,
        "stage": promotion.stage.name,
        "source_stage": promotion.source_stage,
        "previous_holder": promotion.previous_holder,
        "requested_by": promotion.requested_by_name,
        "justification": promotion.justification,
        "via": promotion.via,
        "approvals": sum(1 for r in reviews if r.decision == Review.Decision.APPROVE and not r.stale),
        "required_approvals": rules.approvals,
        "checks": promotion.check_results,
        "evidence": promotion.ci_evidence,
        "evidence_sha256": promotion.evidence_sha256,
        "artifacts": selectors.request_artifacts(promotion),
        "then_stages": promotion.then_stages,
        "last_error": promotion.last_error,
        "attempts": promotion.attempts,
        "next_attempt_at": retry.next_at if retry else None,
        "scheduled_for": hold.scheduled_for if hold else None,
        "hold": hold.sentence if hold else "",
        "reviews": [
            {
                "reviewer": r.reviewer_name,
                "decision": r.decision,
                "comment": r.comment,
                "created_at": r.created_at,
                "stale": r.stale,
                "signature": _signature_out(r),
            }
            for r in reviews
        ],
        "risk_tier": rules.tier,
        "rules": {
            "tier": rules.tier,
            "tier_at_filing": rules.tier_at_filing,
            "approvals": rules.approvals,
            "required_groups": [name for _, name in rules.required_groups],
            "signature_required": rules.signature_required,
            "summary": rules.summary,
            "sentences": list(rules.sentences),
        },
        "created_at": promotion.created_at,
        "updated_at": promotion.updated_at,
        "expires_at": promotion.expires_at,
        "escalated_at": promotion.escalated_at,
        "decided_at": promotion.decided_at,
        "applied_at": promotion.applied_at,
        "emergency": _emergency_out(promotion),
        "url": request_url(promotion.pk),
    }


def _emergency_out(promotion: PromotionRequest) -> dict[str, Any] | None:
    if not promotion.is_emergency:
        return None
    return {
        "by": promotion.emergency_by_name,
        "at": promotion.emergency_at,
        "reason": promotion.emergency_reason,
        "reviews_required": promotion.reviews_required,
        "review_due_at": promotion.review_due_at,
        "review_completed_at": promotion.review_completed_at,
        "review_overdue": promotion.review_overdue(timezone.now()),
        "reviews": [
            {"reviewer": r.reviewer_name, "comment": r.comment, "created_at": r.created_at}
            for r in promotion.retrospective_reviews.all()
        ],
    }


def _signature_out(review: Review) -> dict[str, Any] | None:
    if not review.is_signed:
        return None
    return {
        "name": review.signer_name,
        "username": review.signer_username,
        "signed_at": review.signed_at,
        "meaning": review.signed_meaning,
        "digest": review.signed_digest,
    }


def _reloaded(request_id: int) -> dict[str, Any]:
    return _request_out(selectors.request_page(request_id))


def _stage_out(stage: Stage) -> dict[str, Any]:
    now = timezone.now()
    return {
        "name": stage.name,
        "position": stage.position,
        "description": stage.description,
        "mlflow_stage": stage.mlflow_stage,
        "mlflow_alias": stage.mlflow_alias,
        "archive_existing": stage.archive_existing,
        "allow_from_none": stage.allow_from_none,
        "allowed_from": sorted(s.name for s in stage.allowed_from.all()),
        "required_approvals": stage.required_approvals,
        "approver_groups": sorted(g.name for g in stage.approver_groups.all()),
        "checks": stage.check_rules(),
        "request_ttl_seconds": int(stage.request_ttl.total_seconds()),
        "is_active": stage.is_active,
        "enforcement": stage.enforcement,
        "signature_required": stage.signature_required,
        "signature_meanings": stage.approval_meanings(),
        "window_time_zone": stage.window_time_zone,
        "deployment_windows": [line for line in stage.deployment_windows.splitlines() if line.strip()],
        "emergency_allowed": stage.emergency_allowed,
        "escalate_after_seconds": int(stage.escalate_after.total_seconds()) if stage.escalate_after else None,
        "independent_validation": stage.independent_validation,
        "risk_tiers": [
            {
                "tier": rule.tier,
                "min_approvals": rule.min_approvals,
                "required_group": rule.required_group.name if rule.required_group_id else None,
                "signature_required": rule.signature_required,
                "summary": policy.describe_tier_rule(rule, stage=stage),
            }
            for rule in stage.risk_tier_rules.all()
        ],
        "freezes": [
            {
                "starts_at": freeze.starts_at,
                "ends_at": freeze.ends_at,
                "reason": freeze.reason,
                "in_force": freeze.starts_at <= now,
            }
            for freeze in stage.current_freezes
        ],
    }


# --- stages -----------------------------------------------------------------------------------


def _stages():
    return Stage.objects.prefetch_related(
        "allowed_from",
        "approver_groups",
        selectors.tier_rules_prefetch(),
        selectors.current_freezes_prefetch(),
    )


@api.get("/stages", response={200: list[StageOut], **_errors()}, tags=["stages"])
def stage_list(request):
    """The stage catalog, in pipeline order."""
    _require_role(request)
    return [_stage_out(stage) for stage in _stages()]


@api.get("/stages/{path:name}", response={200: StageOut, **_errors(404)}, tags=["stages"])
def stage_get(request, name: Annotated[str, Path(min_length=1, max_length=300, pattern=_NO_NUL)]):
    """One stage of the catalog, by name (case does not matter)."""
    _require_role(request)
    stage = _stages().filter(name__iexact=name.strip()).first()
    if stage is None:
        known = ", ".join(Stage.objects.filter(is_active=True).values_list("name", flat=True))
        message = f"Stage '{name}' is not in the stage catalog. Known stages: {known}."
        raise ApiError(404, "unknown_stage", message)
    return _stage_out(stage)


# --- requests ---------------------------------------------------------------------------------


@api.get("/requests", response={200: RequestPageOut, **_errors()}, tags=["requests"])
def request_list(
    request,
    status: Annotated[Literal[tuple(PromotionRequest.Status.values)] | None, Query()] = None,  # type: ignore[valid-type]
    stage: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
    model_name: Annotated[str | None, Query(max_length=256, pattern=_NO_NUL)] = None,
    mine: Annotated[bool, Query(description="Only requests filed by the token's user.")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
):
    """Requests, newest first."""
    _require_role(request)
    requests = selectors.requests_filtered(
        PromotionRequest.objects.all(), status=status or "", stage=stage or "", model_name=model_name or ""
    )
    if mine:
        requests = requests.filter(requested_by=_user(request))
    page = (
        requests.select_related("version__model", "stage")
        .prefetch_related("reviews", "retrospective_reviews")
        .order_by("-created_at", "-id")[offset : offset + limit]
    )
    return {
        "count": requests.count(),
        "items": [_request_out(p) for p in selectors.with_tier_rules(list(page))],
    }


@api.post("/requests", response={201: RequestOut, **_errors(409, 413, 503)}, tags=["requests"])
def request_create(request, payload: RequestIn):
    """File a request. With a stage that needs no approval and checks that all pass, it comes
    back `approved` and the worker applies it; if a check fails it is refused (422) with the
    failing checks listed. The version is read from MLflow first: when MLflow does not answer,
    nothing is filed (503, `registry_unavailable`; try again later)."""
    filed = services.promotion_request_file(
        model_name=payload.model_name,
        version=payload.version,
        stage_name=payload.stage,
        requested_by=_user(request),
        justification=payload.justification,
        ci_evidence=payload.evidence,
        via="api",
    )
    return Status(201, _reloaded(filed.pk))


@api.post("/requests/bulk", response={200: BulkOut, **_errors(413, 503)}, tags=["requests"])
def request_create_passing(request, payload: BulkIn):
    """File one request per model for its latest version whose checks for `stage` pass and that
    the catalog lets move there. The choice is made from the registry mirror after one sync,
    so it costs the same few MLflow calls however many models there are; when that sync fails,
    nothing is filed (503, `registry_unavailable`)."""
    services.requester_required(
        _user(request),
        what=f"file requests in bulk → {payload.stage} through the API",
        to_stage=payload.stage,
    )
    stage = catalog.stage_get_by_name(payload.stage)
    outcome = services.promotion_requests_create_passing(
        stage=stage,
        requested_by=_user(request),
        justification=payload.justification,
        model_names=payload.models,
        ci_evidence=payload.evidence,
        via="api",
    )
    return {
        "stage": stage.name,
        "filed": [_reloaded(p.pk) for p in outcome.filed],
        "skipped": [vars(s) for s in outcome.skipped],
        "refused": [vars(r) for r in outcome.refused],
    }


RequestId = Annotated[int, Path(ge=1, le=MAX_ID)]


@api.get("/requests/{request_id}", response={200: RequestOut, **_errors(404)}, tags=["requests"])
def request_get(request, request_id: RequestId):
    """One request, with its checks, evidence digest and reviews."""
    return _request_out(_get_request_for_user(request, request_id))


@api.post(
    "/requests/{request_id}/approve", response={200: RequestOut, **_errors(404, 409, 413)}, tags=["requests"]
)
def request_approve(request, request_id: RequestId, payload: DecisionIn | None = None):
    """Approve as the token's user (an approver of the stage, not the requester, and on a stage
    with independent validators not the version's author: 403 `not_independent`). On a stage that
    requires a signature (`signature_required`) the answer is 403 `signature_required`: a token
    proves the pipeline, not the person, so signed decisions are made on the request page."""
    promotion = _get_request_for_user(request, request_id)
    payload = payload or DecisionIn()
    services.review_approve(
        request=promotion,
        reviewer=_user(request),
        comment=payload.comment,
        evidence_sha256=payload.evidence_sha256,
        via="api",
    )
    return _reloaded(promotion.pk)


@api.post(
    "/requests/{request_id}/reject", response={200: RequestOut, **_errors(404, 409, 413)}, tags=["requests"]
)
def request_reject(request, request_id: RequestId, payload: DecisionIn):
    """Reject as the token's user; a comment saying what must change is required. Refused with 403
    `signature_required` on a stage that requires a signature, as approving is."""
    promotion = _get_request_for_user(request, request_id)
    services.review_reject(request=promotion, reviewer=_user(request), comment=payload.comment, via="api")
    return _reloaded(promotion.pk)


@api.post(
    "/requests/{request_id}/cancel", response={200: RequestOut, **_errors(404, 409, 413)}, tags=["requests"]
)
def request_cancel(request, request_id: RequestId):
    """Cancel a pending or approved request (its requester or a stage admin)."""
    promotion = _get_request_for_user(request, request_id)
    services.request_cancel(request=promotion, user=_user(request), via="api")
    return _reloaded(promotion.pk)


@api.post(
    "/requests/{request_id}/emergency",
    response={200: RequestOut, **_errors(404, 409, 413)},
    tags=["requests"],
)
def request_emergency(request, request_id: RequestId, payload: EmergencyIn):
    """Apply a pending request at once as an emergency change (stage admins; the stage must allow
    emergency changes). The approvals are skipped, the model files' and the catalog's checks are
    not; the stage's approvers and the auditors are told, and approvers owe a retrospective review
    within BREAK_GLASS_REVIEW_HOURS. 422 without a reason, 409 when the request is not pending."""
    promotion = _get_request_for_user(request, request_id)
    services.request_break_glass(request=promotion, user=_user(request), reason=payload.reason, via="api")
    return _reloaded(promotion.pk)


@api.post(
    "/requests/{request_id}/retrospective-review",
    response={200: RequestOut, **_errors(404, 409, 413)},
    tags=["requests"],
)
def request_retrospective_review(request, request_id: RequestId, payload: RetrospectiveIn):
    """Review an emergency change after the fact (an approver of the stage, neither its requester
    nor the stage admin who applied it); a comment is required."""
    promotion = _get_request_for_user(request, request_id)
    services.retrospective_review_give(
        request=promotion, reviewer=_user(request), comment=payload.comment, via="api"
    )
    return _reloaded(promotion.pk)


# --- models -----------------------------------------------------------------------------------


@api.get("/models/{path:name}", response={200: ModelOut, **_errors(404)}, tags=["models"])
def model_get(
    request,
    name: Annotated[str, Path(min_length=1, max_length=256, pattern=_NO_NUL)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
):
    """A model of the registry mirror: its versions (newest first) and who holds each stage."""
    _require_role(request)
    model = RegisteredModel.objects.filter(name=name).first()
    if model is None:
        raise ApiError(404, "not_found", f"No model named '{name}' in the registry mirror.")
    stages = list(Stage.objects.all())
    holders: dict[str, list[int]] = {stage.name: [] for stage in stages}
    for number, current_stage, aliases in (
        ModelVersion.objects.filter(model=model, is_deleted=False)
        .order_by("-version")
        .values_list("version", "current_stage", "aliases")
    ):
        for held in catalog.version_positions(current_stage=current_stage, aliases=aliases, stages=stages):
            holders[held].append(number)
    versions = ModelVersion.objects.filter(model=model).order_by("-version")
    return {
        "name": model.name,
        "description": model.description,
        "is_deleted": model.is_deleted,
        "has_drift": model.has_drift,
        "aliases": model.aliases or {},
        "stage_holders": holders,
        "version_count": versions.count(),
        "versions": [
            {
                "version": v.version,
                "current_stage": v.current_stage,
                "aliases": list(v.aliases or []),
                "stages": catalog.version_positions(
                    current_stage=v.current_stage, aliases=v.aliases or [], stages=stages
                ),
                "status": v.status,
                "run_id": v.run_id,
                "source": v.source,
                "metrics": v.metrics or {},
                "params": {k: str(val) for k, val in (v.params or {}).items()},
                "tags": {k: str(val) for k, val in (v.tags or {}).items()},
                "is_deleted": v.is_deleted,
                "creation_timestamp": v.creation_timestamp,
            }
            for v in versions[offset : offset + limit]
        ],
    }


# --- audit ------------------------------------------------------------------------------------


@api.get("/audit", response={200: AuditPageOut, **_errors()}, tags=["audit"])
def audit_list(
    request,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Entries after this sequence number.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    action: Annotated[str | None, Query(max_length=32, pattern=_NO_NUL)] = None,
    request_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
):
    """The audit log in sequence order, a page at a time (auditors only)."""
    user = _user(request)
    if not policy.is_auditor(user):
        audit.record_denied(actor=user, what="read the audit log through the API", reason="not an auditor")
        raise ApiError(403, "forbidden", "Only auditors read the audit log.")
    try:
        # The export's rule: an action the log never recorded is a typo, not an empty page.
        parse_filter({"action": action})
    except FilterError as refusal:
        raise ApiError(422, "invalid", str(refusal)) from None
    events = AuditEvent.objects.filter(sequence__gt=after)
    if action:
        events = events.filter(action=action)
    if request_id:
        events = events.filter(request_id=request_id)
    page = list(events.order_by("sequence")[:limit])
    items = [{**audit.payload_of(event), "hash": event.hash} for event in page]
    return {"items": items, "next_after": page[-1].sequence if len(page) == limit else None}


# --- history: who held each stage, and when ---------------------------------------------------

Via = Literal["request", "outside", "revert", "before_record"]


class HolderChangeOut(Schema):
    stage: str = Field(description="The catalog stage.")
    binding: str = Field(description="What MLflow binds: `stage Production` or `alias @champion`.")
    version: int
    from_: datetime | None = Field(
        alias="from", description="UTC; null when it held the binding before the record begins."
    )
    until: datetime | None = Field(description="UTC; null while it holds the binding.")
    via: Via = Field(
        description="`request` (our workflow), `outside` (a change made in MLflow: a drift event), "
        "`revert` (a drift put back), `before_record` (held before the record begins)."
    )
    request_id: int | None
    drift_event_id: int | None
    audit_sequence: int | None = Field(description="The `registry.reverted` entry, for `revert`.")
    requested_by: str
    approved_by: list[str]


class ModelHistoryOut(Schema):
    model_name: str
    count: int
    items: list[HolderChangeOut]


class HolderOut(Schema):
    model_name: str
    binding: str
    version: int
    since: datetime
    via: Via
    request_id: int | None
    drift_event_id: int | None
    audit_sequence: int | None
    requested_by: str
    approved_by: list[str]


class HoldersPageOut(Schema):
    at: datetime
    stage: str
    count: int
    items: list[HolderOut]


def _source_out(source: history.Source) -> dict[str, Any]:
    return {
        "via": source.kind,
        "request_id": source.request_id,
        "drift_event_id": source.drift_event_id,
        "audit_sequence": source.audit_sequence,
        "requested_by": source.requested_by,
        "approved_by": list(source.approved_by),
    }


@api.get(
    "/models/{path:name}/history",
    response={200: ModelHistoryOut, **_errors(404)},
    tags=["models"],
    by_alias=True,
)
def model_history(
    request,
    name: Annotated[str, Path(min_length=1, max_length=256, pattern=_NO_NUL)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
):
    """Every holder change of every catalog stage of a model, from the audit log and the mirror's
    drift events: by stage (pipeline order), binding, then from oldest to newest."""
    _require_role(request)
    model = RegisteredModel.objects.filter(name=name).first()
    if model is None:
        raise ApiError(404, "not_found", f"No model named '{name}' in the registry mirror.")
    entries = history.model_history(model).entries
    return {
        "model_name": model.name,
        "count": len(entries),
        "items": [
            {
                "stage": entry.stage.name,
                "binding": entry.binding.label,
                "version": entry.interval.version,
                "from": entry.interval.since,
                "until": entry.interval.until,
                **_source_out(entry.interval.source),
            }
            for entry in entries[offset : offset + limit]
        ],
    }


@api.get("/holders", response={200: HoldersPageOut, **_errors()}, tags=["models"])
def holders(
    request,
    at: Annotated[
        str,
        Query(
            min_length=1,
            max_length=64,
            pattern=_NO_NUL,
            description="ISO 8601 with a timezone, e.g. 2026-03-01T09:00:00Z; a time without one is refused.",
        ),
    ],
    stage: Annotated[str, Query(min_length=1, max_length=64, pattern=_NO_NUL)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
):
    """Which version of every model held `stage` at `at`, by model name. Held since a known
    change only: a version that held it before the record begins is not listed."""
    _require_role(request)
    try:
        moment = history.parse_moment(at)
    except ValueError as exc:
        errors = [{"loc": ["query", "at"], "msg": str(exc), "type": "value_error"}]
        raise ApiError(422, "invalid", f"The request is not valid: at: {exc}", errors) from None
    found = catalog.stage_get_by_name(stage)
    rows = history.holders_at(moment, found)
    return {
        "at": moment,
        "stage": found.name,
        "count": len(rows),
        "items": [
            {
                "model_name": row.model_name,
                "binding": row.interval.binding.label,
                "version": row.interval.version,
                "since": row.interval.since,
                **_source_out(row.interval.source),
            }
            for row in rows[offset : offset + limit]
        ],
    }


# --- URLs -------------------------------------------------------------------------------------


def page_not_found(request, exception):
    """The site's 404 handler: JSON under /api/ (a URL no route matches, e.g. a path parameter
    with a line break), the usual page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "not_found", "message": "No such API endpoint."}, status=404)
    return error_pages.page_not_found(request, exception)


def _mark_public(patterns) -> None:
    # The site requires a signed-in session everywhere (LoginRequiredMiddleware); the API
    # authenticates each call by its bearer token instead, and answers 401 in JSON itself.
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            _mark_public(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            login_not_required(pattern.callback)


def _longer_routes_first(patterns) -> list:
    """`models/<path:name>` matches `models/x/history` too, and ninja lists routes in the order
    they were declared: a route that goes on after a `<path:…>` parameter comes first."""
    return sorted(patterns, key=lambda p: not re.search(r"<path:\w+>/", str(getattr(p, "pattern", ""))))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _json_answers(view):
    """ninja answers a wrong method with plain text and parses any body as JSON whatever its
    type; a pipeline reading the answer expects JSON, and a body sent as another type is a
    client mistake worth naming."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        # The declared length, not request.body: reading a body over the upload limit here would
        # answer Django's 400 before the API's own 413.
        has_body = request.META.get("CONTENT_LENGTH") not in (None, "", "0")
        if has_body and not _is_json(request.content_type or ""):
            return JsonResponse(
                {
                    "code": "unsupported_media_type",
                    "message": f"Send the body as application/json, not {request.content_type or 'no type'}.",
                },
                status=415,
            )
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            response = JsonResponse(
                {"code": "method_not_allowed", "message": f"Use {allowed} on this endpoint."}, status=405
            )
            response["Allow"] = allowed
        return response

    return wrapper


def _unknown_endpoint(request, rest: str):
    # Matched last, so an unknown URL under /api/ gets JSON with DEBUG on too (the site's
    # handler404 only runs with DEBUG off).
    return page_not_found(request, None)


def urls():
    patterns, app_name, namespace = api.urls
    _mark_public(patterns)
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = _json_answers(pattern.callback)
    catch_all = path("<path:rest>", login_not_required(_unknown_endpoint))
    return [*_longer_routes_first(patterns), catch_all], app_name, namespace
