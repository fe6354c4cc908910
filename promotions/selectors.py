"""Reads: what pages, the API and the CLI show. No writes here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, Prefetch, Q, prefetch_related_objects
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from promotions import catalog, change_windows, policy, roles
from promotions.model_changes import FileChanges, file_changes
from promotions.models import (
    AuditEvent,
    DriftRevert,
    Freeze,
    ManifestState,
    PromotionRequest,
    RetrospectiveReview,
    Review,
    RiskTierRule,
    Stage,
)
from promotions.policy import decidable_requests, may_request
from registry_sync import gateway
from registry_sync.model_files import version_model_files_for
from registry_sync.models import DriftEvent, SyncRun


@dataclass(frozen=True)
class Frame:
    actionable: int
    roles: list[str]
    is_auditor: bool
    may_request: bool
    registry_error: str
    last_sync_at: object


def frame_for_user(user) -> Frame:
    last = SyncRun.objects.filter(finished_at__isnull=False).only("error", "finished_at").first()
    last_good = (
        SyncRun.objects.filter(finished_at__isnull=False, error="").only("finished_at").first()
        if last and last.error
        else last
    )
    return Frame(
        actionable=actionable_count(user),
        roles=sorted(roles.role_names(user)),
        is_auditor=roles.has_role(user, roles.AUDITORS),
        may_request=may_request(user),
        registry_error=last.error if last and last.error else "",
        last_sync_at=last_good.finished_at if last_good else None,
    )


# Requests nobody can approve yet: a check fails, or their model files are not recorded (still
# computing, or the manifest failed). In SQL, so that lists and counts leave them out alike.
_BLOCKED = Q(checks_blocked=True) | Q(manifest_state__in=[ManifestState.COMPUTING, ManifestState.FAILED])


def waiting_for(user):
    """What `user` can decide now: the requests they may decide that can be approved (one whose
    checks fail, or whose model files are not recorded, is not waiting for them)."""
    return decidable_requests(user).exclude(_BLOCKED)


# What a queue row never shows: the snapshots and file lists, large on a real registry, are
# left in the database rather than read and decoded 50 times a page. (The model's tags stay:
# its risk tier is read from them.)
QUEUE_ROW_DEFERRED = (
    "evidence",
    "ci_evidence",
    "manifest",
    "observed_holders",
    "last_error_detail",
    "manifest_error_detail",
    "version__metrics",
    "version__params",
    "version__tags",
    "version__source",
    "version__description",
    "version__model__aliases",
    "version__model__description",
)


def inbox(user, *, stage: str = "", model: str = "", status: str = ""):
    """ "Waiting for you": what `user` can decide now, and apart from it what they could decide
    once its checks pass. One read of the user's stages serves both."""
    decidable = decidable_requests(user)

    def shaped(requests):
        requests = requests_filtered(requests, stage=stage, model_contains=model, status=status)
        return (
            requests.select_related("version__model", "stage")
            .defer(*QUEUE_ROW_DEFERRED)
            .order_by("-created_at", "-id")
        )

    return shaped(decidable.exclude(_BLOCKED)), shaped(decidable.filter(_BLOCKED))


def actionable_count(user, *, known: int | None = None) -> int:
    """How many requests wait for `user`'s decision, counted once per page: the queue's first
    tab counts exactly these for its pager and hands the figure on with `known`."""
    if known is not None:
        user._actionable_count = known
    cached = getattr(user, "_actionable_count", None)
    if cached is None:
        cached = user._actionable_count = waiting_for(user).count()
    return cached


def stage_history(model) -> dict[str, list[dict]]:
    """Which version held each stage, newest first, from the applied requests."""
    history: dict[str, list[dict]] = {}
    applied = (
        PromotionRequest.objects.filter(version__model=model, status=PromotionRequest.Status.APPLIED)
        .select_related("stage", "version")
        .prefetch_related("reviews")
        .order_by("-applied_at")[:100]
    )
    for request in applied:
        entries = history.setdefault(request.stage.name, [])
        approvers = [
            r.reviewer_name for r in request.reviews.all() if r.decision == "approve" and not r.stale
        ]
        entries.append(
            {
                "version": request.version.version,
                "since": request.applied_at,
                "request_id": request.pk,
                "approvers": approvers,
                "rollback_url": (
                    f"{reverse('request_create')}?model={model.name}&version={request.version.version}"
                    f"&stage={request.stage.name}&rollback=1"
                ),
            }
        )
    return history


# --- request pages ----------------------------------------------------------------------------

LOWER_IS_BETTER = ("loss", "rmse", "mse", "mae", "error", "latency", "mape")


def _lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


def comparison(evidence: dict) -> dict:
    """Candidate vs the current holder of the target, from the evidence snapshot."""
    candidate = evidence.get("metrics", {})
    holder = evidence.get("current_holder") or {}
    current = holder.get("metrics", {})
    rows = []
    for key in sorted(set(candidate) | set(current)):
        new, old = candidate.get(key), current.get(key)
        delta = better = None
        if isinstance(new, int | float) and isinstance(old, int | float):
            delta = new - old
            if delta:
                better = (delta < 0) if _lower_is_better(key) else (delta > 0)
        rows.append({"key": key, "candidate": new, "current": old, "delta": delta, "better": better})
    params_new, params_old = evidence.get("params", {}), holder.get("params", {})
    params = (
        [
            {"key": key, "current": params_old.get(key), "candidate": params_new.get(key)}
            for key in sorted(set(params_new) | set(params_old))
            if params_new.get(key) != params_old.get(key)
        ]
        if holder
        else []
    )
    return {"holder_version": holder.get("version"), "metrics": rows, "params": params}


@dataclass(frozen=True)
class ModelComparison:
    """The request page's "What changes in the model": the full page only, never its poll."""

    candidate_number: int
    holder_number: int | None
    changes: FileChanges | None
    error: str  # why the candidate's files are not shown
    holder_error: str  # why the holder's files are not compared
    description: str
    run_name: str
    version_url: str
    run_url: str


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def model_comparison(promotion: PromotionRequest) -> ModelComparison:
    """The candidate's model files against those of the version holding the target when the
    evidence was taken. Reads both cached rows in one query; a version not read yet is read
    from MLflow now and kept (registry_sync.model_files)."""
    version = promotion.version
    holder_number = (promotion.evidence.get("current_holder") or {}).get("version")
    numbers = [version.version] + ([holder_number] if holder_number else [])
    files = version_model_files_for(
        model_id=version.model_id, numbers=numbers, timeout=settings.MLFLOW_PAGE_TIMEOUT_SECONDS
    )
    candidate = files.get(version.version)
    holder = files.get(holder_number) if holder_number else None
    error = holder_error = ""
    if isinstance(candidate, Exception):
        error = f"The model's files could not be read: {_reason(candidate)}"
        candidate = None
    if isinstance(holder, Exception):
        holder_error = f"The files of v{holder_number} (current) could not be read: {_reason(holder)}"
        holder = None
    elif holder_number and holder is None:
        holder_error = f"v{holder_number} (current) is not in the mirror any more."
    changes = (
        file_changes(candidate, holder, candidate_number=version.version, holder_number=holder_number)
        if candidate is not None
        else None
    )
    run_url = ""
    if candidate is not None and candidate.experiment_id and version.run_id:
        run_url = gateway.ui_run_url(candidate.experiment_id, version.run_id)
    return ModelComparison(
        candidate_number=version.version,
        holder_number=holder_number if holder is not None else None,
        changes=changes,
        error=error,
        holder_error=holder_error,
        description=version.description,
        run_name=candidate.run_name if candidate is not None else "",
        version_url=gateway.ui_version_url(version.model.name, version.version),
        run_url=run_url,
    )


def request_page(request_id: int):
    return (
        PromotionRequest.objects.select_related("version__model", "stage", "requested_by")
        .prefetch_related("stage__approver_groups", "approver_groups_at_filing", "reviews")
        .filter(pk=request_id)
        .first()
    )


def request_seen_token(updated_at) -> str:
    """The version of a request a page shows: every change a viewer sees (a status, a review, a
    stale approval, an apply attempt, an error) moves `updated_at`."""
    return updated_at.strftime("%Y%m%dT%H%M%S%f")


def request_seen(request_id: int) -> str | None:
    """The request's current version, in one read by primary key; None when there is none."""
    updated_at = PromotionRequest.objects.filter(pk=request_id).values_list("updated_at", flat=True).first()
    return None if updated_at is None else request_seen_token(updated_at)


def stage_catalog() -> list[Stage]:
    """The stages in pipeline order, with what the catalog page shows of each: the freezes
    still to come or in force (Stage.current_freezes) and the risk tier rules, in one query
    each for all stages."""
    return list(
        Stage.objects.prefetch_related(
            "allowed_from", "approver_groups", current_freezes_prefetch(), tier_rules_prefetch()
        ).order_by("position", "name")
    )


def current_freezes_prefetch() -> Prefetch:
    """The stages' freezes in force or still to come, as `Stage.current_freezes`, in one query."""
    current = Freeze.objects.filter(ends_at__gt=timezone.now()).order_by("starts_at", "pk")
    return Prefetch("freezes", queryset=current, to_attr="current_freezes")


def freezes_in_words(stage: Stage) -> list[str]:
    """'From 10 Dec 08:00 until 12 Dec 18:00 CET: year-end close', in the stage's time zone,
    for the freezes stage_catalog prefetched."""
    zone = change_windows.zone_get(change_windows.stage_zone_name(stage))
    now = timezone.now()
    words = []
    for freeze in getattr(stage, "current_freezes", []):
        starts, ends = freeze.starts_at.astimezone(zone), freeze.ends_at.astimezone(zone)
        until = ends.strftime("%-d %b %Y %H:%M %Z")
        if freeze.starts_at <= now:
            words.append(f"Frozen now, until {until}: {freeze.reason}")
        else:
            words.append(f"From {starts.strftime('%-d %b %Y %H:%M')} until {until}: {freeze.reason}")
    return words


@dataclass(frozen=True)
class RequestHold:
    """A scheduled request's wait, in words: when it applies (local time of its stage, and how
    long until then) and why it waits."""

    applies: str  # "Applies at Tue 09:00 CET (in 14 h)"
    reason: str  # "Outside the stage's deployment windows", "Frozen until 12 Dec 18:00 CET: close"
    scheduled_for: datetime | None

    @property
    def sentence(self) -> str:
        return f"{self.reason}. {self.applies}." if self.reason else f"{self.applies}."


def request_hold(promotion: PromotionRequest, *, now: datetime | None = None) -> RequestHold | None:
    """What a scheduled request waits for; None in any other state."""
    if promotion.status != PromotionRequest.Status.SCHEDULED:
        return None
    zone = change_windows.stage_zone_name(promotion.stage)
    applies = change_windows.schedule_sentence(promotion.scheduled_for, zone, now or timezone.now())
    return RequestHold(applies=applies, reason=promotion.hold_reason, scheduled_for=promotion.scheduled_for)


@dataclass(frozen=True)
class ApplyRetry:
    """An apply that failed for a reason worth retrying, and the worker's next try."""

    attempt: int  # the attempts made so far (the one running, while applying)
    max_attempts: int
    next_at: datetime | None
    seconds: int  # until next_at, rounded; 0 when due (or running)
    reason: str  # why the last attempt did not apply
    running: bool  # the worker is making attempt `attempt` now


def apply_retry(promotion: PromotionRequest, *, now: datetime | None = None) -> ApplyRetry | None:
    """What the worker does with an approved request whose last attempt could not reach MLflow;
    None when it is not retrying (never tried, or in any other state).

    Only a transient failure leaves a request approved with attempts made (a retry by a stage
    admin starts again from 0); `enqueued_at` is the time the task's own retry was set for.
    """
    Status = PromotionRequest.Status
    if promotion.status not in (Status.APPROVED, Status.APPLYING) or not promotion.attempts:
        return None
    if not promotion.last_error:
        return None
    next_at = promotion.enqueued_at if promotion.status == Status.APPROVED else None
    seconds = 0
    if next_at is not None:
        seconds = max(0, round((next_at - (now or timezone.now())).total_seconds()))
    return ApplyRetry(
        attempt=promotion.attempts,
        max_attempts=settings.PROMOTION_MAX_ATTEMPTS,
        next_at=next_at,
        seconds=seconds,
        reason=promotion.last_error,
        running=promotion.status == Status.APPLYING,
    )


def request_timeline(request_id: int):
    """The request's audit events, one entry per click: the approval that completes the count
    writes a second event (request.approved) which the page folds into the click's entry.
    The audit log itself keeps both."""
    entries = []
    for event in (
        AuditEvent.objects.filter(request_id=request_id)
        .only("sequence", "created_at", "actor_name", "action", "meaning", "details")
        .order_by("sequence")
    ):
        previous = entries[-1] if entries else None
        if (
            event.action == "request.approved"
            and previous is not None
            and previous.action == "review.approved"
            and previous.actor_name == event.actor_name
        ):
            reason = (event.details or {}).get("reason", "")
            previous.meaning = f"{previous.meaning} — approved for promotion" + (
                f" ({reason})" if reason else ""
            )
            continue
        entries.append(event)
    return entries


QUEUE_TABS = ("mine", "open", "recent")


def queue(user, *, tab: str = "mine", stage: str = "", model: str = "", status: str = ""):
    if tab == "mine":
        return inbox(user, stage=stage, model=model, status=status)[0]
    if tab == "recent":
        requests = PromotionRequest.objects.exclude(status__in=PromotionRequest.OPEN_STATUSES).order_by(
            "-updated_at"
        )
    else:
        requests = PromotionRequest.objects.filter(status__in=PromotionRequest.OPEN_STATUSES)
    requests = requests_filtered(requests, stage=stage, model_contains=model, status=status)
    requests = requests.select_related("version__model", "stage").defer(*QUEUE_ROW_DEFERRED)
    if tab != "recent":
        requests = requests.order_by("-created_at", "-id")
    return requests


def requests_filtered(
    requests, *, status: str = "", stage: str = "", model_contains: str = "", model_name: str = ""
):
    """The queue's and the API's filters: a status, a stage (any case), part or all of a model's name."""
    if status:
        requests = requests.filter(status=status)
    if stage:
        requests = requests.filter(stage__name__iexact=stage)
    if model_contains:
        requests = requests.filter(version__model__name__icontains=model_contains)
    if model_name:
        requests = requests.filter(version__model__name=model_name)
    return requests


def with_approvals(rows) -> list:
    """Attach the live approval count to one page of requests, in one query."""
    rows = list(rows)
    counts = dict(
        Review.objects.filter(request_id__in=[r.pk for r in rows], decision="approve", stale=False)
        .values_list("request_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    with_tier_rules(rows)
    for row in rows:
        row.approvals = counts.get(row.pk, 0)
        row.required_approvals = policy.required_approvals(row)
    return rows


def with_tier_rules(rows: list[PromotionRequest]) -> list[PromotionRequest]:
    """Load what policy.rules_in_force reads for a page of requests (loaded with version__model
    and stage): the rows whose model has a risk tier read their stages' tier rules in one query,
    whatever their number; the others need none."""
    tiered = [row for row in rows if policy.model_tier(row.version.model)]
    prefetch_related_objects(tiered, tier_rules_prefetch("stage__risk_tier_rules"))
    return rows


def tier_rules_prefetch(lookup: str = "risk_tier_rules") -> Prefetch:
    """The stages' risk tier rules with their groups, in one query (policy.rules_in_force reads them)."""
    return Prefetch(lookup, queryset=RiskTierRule.objects.select_related("required_group"))


def status_counts() -> dict[str, int]:
    counts = dict(PromotionRequest.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {value: counts.get(value, 0) for value, _ in PromotionRequest.Status.choices}


# --- drift on the model page --------------------------------------------------------------------


# Legacy stages nobody "holds": nothing to put back into them, no request to file for them.
def _revert_url(model_name: str, number: int, stage: Stage) -> str:
    # rollback=1 only asks: the filing service grants a rollback by the record (catalog.held_before).
    query = urlencode({"model": model_name, "version": number, "stage": stage.name, "rollback": 1})
    return f"{reverse('request_create')}?{query}"


def _holders_before(event: DriftEvent, record: DriftRevert | None, stage: Stage) -> list[int]:
    """Who held the binding before the change: the revert record taken at the sync, or else
    the version our last applied request put there."""
    key = f"@{event.alias}" if event.kind == DriftEvent.Kind.ALIAS else event.after
    if record is not None and key in record.holders_before:
        return list(record.holders_before[key])
    if event.kind == DriftEvent.Kind.ALIAS:
        return [int(event.before)] if event.before else []
    last = (
        PromotionRequest.objects.filter(
            version__model=event.model_id, stage=stage, status=PromotionRequest.Status.APPLIED
        )
        .exclude(version__version=event.version)
        .order_by("-applied_at")
        .values_list("version__version", flat=True)
        .first()
    )
    return [last] if last is not None else []


def revert_link(event: DriftEvent, record: DriftRevert | None = None) -> str | None:
    """The Request revert link of a drift: a request that puts the binding's previous holder back.

    A version moved into a stage (or given an alias): the previous holder back, as a rollback.
    A version moved out of a stage: that version back. An alias removed: its holder back. None
    when no request can undo it (an alias set where nobody held it; a holder that still holds).
    """
    if record is None:
        record = DriftRevert.objects.filter(drift_event=event).first()
    name = event.model.name
    if event.kind == DriftEvent.Kind.ALIAS:
        stage = catalog.stage_bound_to(alias=event.alias)
        holders = _holders_before(event, record, stage) if stage else []
        return _revert_url(name, holders[0], stage) if holders else None
    into = catalog.stage_bound_to(mlflow_stage=event.after)
    if into is not None:
        displaced = [
            number
            for number in _holders_before(event, record, into)
            if not event.model.versions.filter(version=number, current_stage=event.after).exists()
        ]
        if displaced:
            return _revert_url(name, max(displaced), into)
    out_of = catalog.stage_bound_to(mlflow_stage=event.before)
    if out_of is not None and event.version is not None:
        return _revert_url(name, event.version, out_of)
    return None


@dataclass(frozen=True)
class DriftItem:
    event: DriftEvent
    revert: DriftRevert | None
    revert_url: str | None


def drift_items(events: list[DriftEvent]) -> list[DriftItem]:
    """The model page's unresolved drift, each with what enforcement did and its revert link."""
    records = {r.drift_event_id: r for r in DriftRevert.objects.filter(drift_event__in=events)}
    return [
        DriftItem(
            event=event, revert=records.get(event.pk), revert_url=revert_link(event, records.get(event.pk))
        )
        for event in events
    ]


# --- the model's files a request is bound to ----------------------------------------------------


def files_summary(*, files: int, size: int, sha256: str) -> str:
    """'7 files, 48.2 MB, sha256 ab12cd34ef56…': the words the page and the audit log use."""
    words = f"{files} file{'s' if files != 1 else ''}, {filesizeformat(size)}, sha256 {sha256[:12]}…"
    return words.replace("\xa0", " ")


_ARTIFACT_STATES = {
    ManifestState.NONE: "none",
    ManifestState.COMPUTING: "computing",
    ManifestState.READY: "recorded",
    ManifestState.FAILED: "failed",
}


def request_artifacts(promotion: PromotionRequest) -> dict:
    """The request's model files as the page and the API show them: state ("none", "computing",
    "recorded", "failed"), digest, count, bytes, the file list and the reason it failed."""
    recorded = promotion.manifest_state == ManifestState.READY
    manifest = promotion.manifest or {}
    return {
        "state": _ARTIFACT_STATES[ManifestState(promotion.manifest_state)],
        "sha256": manifest.get("sha256") if recorded else None,
        "files": len(manifest.get("files", [])) if recorded else None,
        "bytes": manifest.get("bytes") if recorded else None,
        "summary": files_summary(
            files=len(manifest["files"]), size=manifest["bytes"], sha256=manifest["sha256"]
        )
        if recorded
        else "",
        "file_list": [
            {"path": path, "size": size, "sha256": sha256} for path, size, sha256 in manifest.get("files", [])
        ]
        if recorded
        else [],
        "error": promotion.manifest_error,
        "error_detail": promotion.manifest_error_detail,
    }


# --- emergency changes (break-glass) -----------------------------------------------------------


@dataclass(frozen=True)
class EmergencyView:
    """An emergency change's retrospective review as the pages show it."""

    request: PromotionRequest
    reviews: list[RetrospectiveReview]
    given: int
    needed: int
    due_at: datetime | None
    completed_at: datetime | None
    overdue: bool
    # "Review overdue by 3 h", or "" when not overdue.
    overdue_words: str
    reviewers: list[str] = field(default_factory=list)

    @property
    def status_words(self) -> str:
        if self.completed_at is not None:
            return "Review complete"
        if self.overdue:
            return self.overdue_words
        return f"Review due by {self.due_at:%Y-%m-%d %H:%M} UTC" if self.due_at else "Review due"


def emergency_view(
    promotion: PromotionRequest,
    *,
    reviews: list[RetrospectiveReview] | None = None,
    given: int | None = None,
    now=None,
) -> EmergencyView | None:
    """None for a request that was not an emergency change; its review's state otherwise (one
    query for the reviews unless they are given, prefetched)."""
    if not promotion.is_emergency:
        return None
    now = now or timezone.now()
    reviews = list(promotion.retrospective_reviews.all()) if reviews is None else reviews
    overdue = promotion.review_overdue(now)
    late = overdue_words(now - promotion.review_due_at) if overdue else ""
    return EmergencyView(
        request=promotion,
        reviews=reviews,
        given=len(reviews) if given is None else given,
        needed=promotion.reviews_required,
        due_at=promotion.review_due_at,
        completed_at=promotion.review_completed_at,
        overdue=overdue,
        overdue_words=f"Review overdue by {late}" if overdue else "",
        reviewers=[r.reviewer_name for r in reviews],
    )


def emergency_changes() -> list[EmergencyView]:
    """Every emergency change, newest first, with its review: the auditors' page, in two
    queries whatever the number of changes."""
    rows = (
        PromotionRequest.objects.filter(emergency_at__isnull=False)
        .select_related("version__model", "stage")
        .defer(*QUEUE_ROW_DEFERRED)
        .prefetch_related("retrospective_reviews")
        .order_by("-emergency_at", "-id")
    )
    now = timezone.now()
    return [emergency_view(row, reviews=list(row.retrospective_reviews.all()), now=now) for row in rows]


def retrospective_queue(user, *, limit: int = 50) -> list[EmergencyView]:
    """The emergency changes `user` may review now (the queue's section), overdue first."""
    rows = (
        policy.retrospective_reviewable(user)
        .select_related("version__model", "stage")
        .defer(*QUEUE_ROW_DEFERRED)
        .annotate(given=Count("retrospective_reviews"))
        .order_by("review_due_at", "id")[:limit]
    )
    now = timezone.now()
    return [emergency_view(row, reviews=[], given=row.given, now=now) for row in rows]


def overdue_reviews(now: datetime | None = None):
    """Emergency changes whose retrospective review is past due and not complete."""
    return PromotionRequest.objects.filter(
        emergency_at__isnull=False, review_completed_at__isnull=True, review_due_at__lt=now or timezone.now()
    )


def overdue_words(late: timedelta) -> str:
    """'3 h', '2 days 4 h', '12 min': how late a review is, for pages, e-mails and the log."""
    minutes = max(int(late.total_seconds()) // 60, 0)
    days, hours = minutes // 1440, (minutes % 1440) // 60
    if days:
        return f"{days} day{'s' if days != 1 else ''}" + (f" {hours} h" if hours else "")
    if hours:
        return f"{hours} h"
    return f"{minutes} min"
