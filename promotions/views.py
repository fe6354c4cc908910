"""Pages for every role: the queue, requests, the stage catalog, and the models with their stage
history. Views parse, call one service or selector, render."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from common import log_context
from promotions import catalog, change_windows, error_pages, history, policy, polling, selectors, services
from promotions.audit import exports, record_denied, utc_iso
from promotions.errors import (
    AlreadyDecided,
    NotAllowed,
    PromotionError,
    RegistryUnavailable,
    SignatureRefused,
)
from promotions.forms import (
    DecisionForm,
    PromotionRequestForm,
    parse_number,
    parse_optional_number,
    parse_text,
)
from promotions.identity import reauth
from promotions.models import REJECTION_MEANING, PromotionRequest, Stage
from promotions.services import enforcement, signatures
from registry_sync import selectors as mirror
from registry_sync.models import DriftEvent

PAGE_SIZE = 50


def _get_request_for_user(request: HttpRequest, pk: int) -> PromotionRequest:
    log_context.bind_promotion_request(pk)
    promotion = selectors.request_page(pk)
    if promotion is None:
        raise Http404("No such request.")
    if not policy.may_view_request(request.user, promotion):
        raise PermissionDenied("You have no role that may see promotion requests.")
    return promotion


NO_ROLE = "You have no role in this application yet; ask an administrator."


def _require_role(request: HttpRequest) -> None:
    if not policy.has_any_role(request.user):
        raise PermissionDenied(NO_ROLE)


def bad_input(request: HttpRequest, error: ValidationError, *, back: str = "queue") -> HttpResponse:
    """A value no form of ours sends (a forged link, an edited field): 400, saying which."""
    if request.htmx:
        return error_pages.error_response(request, 400, " ".join(error.messages))
    context = {"message": " ".join(error.messages), "back_url": reverse(back)}
    return render(request, "promotions/bad_input.html", context, status=400)


@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    return _queue_page(request, request.GET)


def _queue_page(request: HttpRequest, query, *, bulk_errors=(), status: int = 200) -> HttpResponse:
    """The queue for `query`'s tab and filters; the bulk box shows `bulk_errors` beside its buttons."""
    _require_role(request)
    tab = query.get("tab", "mine")
    tab = tab if tab in selectors.QUEUE_TABS else "mine"
    status_filter = query.get("status", "")
    status_filter = status_filter if status_filter in PromotionRequest.Status.values else ""
    try:
        filters = {
            "stage": parse_text(query.get("stage", ""), name="stage filter", max_length=64),
            "model": parse_text(query.get("model", ""), name="model filter", max_length=256),
            "status": status_filter,
        }
    except ValidationError as error:
        return bad_input(request, error)
    if tab == "mine":
        rows, blocked_rows = selectors.inbox(request.user, **filters)
    else:
        rows, blocked_rows = selectors.queue(request.user, tab=tab, **filters), None
    page = Paginator(rows, PAGE_SIZE).get_page(query.get("page"))
    if tab == "mine" and not any(filters.values()):
        selectors.actionable_count(request.user, known=page.paginator.count)  # the frame's badge
    page.object_list = selectors.with_approvals(page.object_list)
    page_ids = [row.pk for row in page.object_list]
    decidable = (
        set(policy.decidable_requests(request.user).filter(pk__in=page_ids).values_list("pk", flat=True))
        if tab != "mine"
        else set(page_ids)
    )
    # A request whose checks fail cannot be approved: on "Waiting for you" it is shown apart,
    # with the failing rules, rather than among (or counted with) the requests the reviewer
    # can decide now.
    blocked = []
    if blocked_rows is not None and page.number == 1:
        blocked = list(blocked_rows[:PAGE_SIZE])
        for row in blocked:
            row.failing = policy.failing(row.check_results)
            row.blocker = getattr(policy.approval_blocker(row), "message", "")
    context = {
        "page": page,
        "blocked": blocked,
        "tab": tab,
        "filters": filters,
        "stages": Stage.objects.values_list("name", flat=True),
        "statuses": PromotionRequest.Status.choices,
        "counts": selectors.status_counts(),
        "actionable_ids": decidable,
        "bulk_errors": bulk_errors,
        # Emergency changes whose retrospective review this user owes, on "Waiting for you".
        "retrospective": selectors.retrospective_queue(request.user)
        if tab == "mine" and page.number == 1
        else [],
    }
    if request.htmx:
        template = "promotions/queue.html#queue-form" if bulk_errors else "promotions/queue.html#queue-rows"
    else:
        template = "promotions/queue.html"
    return render(request, template, context, status=status)


@require_POST
def queue_bulk(request: HttpRequest) -> HttpResponse:
    _require_role(request)
    decision = request.POST.get("decision")
    comment = request.POST.get("comment", "")
    try:
        ids = [parse_number(pk, name="request id") for pk in request.POST.getlist("request_ids")[:200]]
    except ValidationError as error:
        return bad_input(request, error)
    if decision not in ("approve", "reject") or not ids:
        # 422 with the queue: the reason stands beside the bulk buttons, with or without JavaScript.
        return _queue_page(
            request, {"tab": "mine"}, bulk_errors=["Select at least one request and a decision."], status=422
        )
    done, refused = [], []
    for promotion in PromotionRequest.objects.filter(pk__in=ids).select_related("version__model", "stage"):
        try:
            if decision == "approve":
                # An approval is of the evidence the reviewer saw: each row sends its digest,
                # and the service refuses a request whose evidence changed since.
                seen = request.POST.get(f"evidence_{promotion.pk}", "")
                if not seen:
                    raise AlreadyDecided("The page did not say which evidence you saw; review it again.")
                services.review_approve(
                    request=promotion, reviewer=request.user, comment=comment, evidence_sha256=seen
                )
            else:
                services.review_reject(request=promotion, reviewer=request.user, comment=comment)
            done.append(f"#{promotion.pk}")
        except PromotionError as exc:
            refused.append(f"#{promotion.pk}: {exc.message}")
    if done:
        verb = "Approved" if decision == "approve" else "Rejected"
        messages.success(request, f"{verb} {', '.join(done)}.")
    if refused and request.htmx:
        # Each refusal beside the bulk buttons, in the fragment htmx swaps.
        return _queue_page(request, {"tab": "mine"}, bulk_errors=refused, status=422)
    # Without htmx the decisions stand: post, redirect, and the refusals in the flash.
    for line in refused:
        messages.error(request, line)
    return redirect(f"{reverse('queue')}?tab=mine")


@require_http_methods(["GET", "POST"])
def request_create(request: HttpRequest) -> HttpResponse:
    if not policy.may_request(request.user):
        if request.method == "POST":
            # An attempt to file is on the record, as it is through the API and the CLI.
            try:
                services.requester_required(request.user, what="file a promotion request from the page")
            except PromotionError as exc:
                raise PermissionDenied(exc.message) from None
        raise PermissionDenied("Only requesters, reviewers and stage admins file promotion requests.")
    source = request.POST if request.method == "POST" else request.GET
    try:
        model_name = parse_text(source.get("model", ""), name="model", max_length=256)
        version_number = parse_optional_number(source.get("version"), name="version")
    except ValidationError as error:
        return bad_input(request, error, back="request_create")
    rollback = source.get("rollback") == "1"
    status = 200
    if request.method == "POST":
        form = PromotionRequestForm(
            request.POST, model_name=model_name, version_number=version_number, rollback=rollback
        )
        status = 422
        if form.is_valid():
            try:
                # Refreshed from MLflow like the API and the CLI: nothing is filed on the
                # mirror's word alone.
                promotion = services.promotion_request_file(
                    model_name=form.cleaned_data["model"],
                    version=form.cleaned_data["version"],
                    stage_name=form.cleaned_data["stage"],
                    requested_by=request.user,
                    justification=form.cleaned_data["justification"],
                    rollback=rollback,
                )
            except PromotionError as exc:
                form.add_error(None, exc.message)
                status = exc.http_status if isinstance(exc, RegistryUnavailable) else 422
            else:
                url = reverse("request_detail", args=[promotion.pk])
                messages.success(request, f"Request #{promotion.pk} filed.")
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    else:
        initial = {"model": model_name, "version": version_number, "stage": source.get("stage", "")}
        form = PromotionRequestForm(
            initial=initial, model_name=model_name, version_number=version_number, rollback=rollback
        )
    preview = _check_preview(form, source.get("stage", ""))
    context = {"form": form, "preview": preview, "rollback": rollback}
    template = "promotions/request_form.html"
    if request.htmx:
        # Choosing a model or version swaps only the choices: what was typed stays put.
        part = "request-choices" if source.get("part") == "choices" else "request-form"
        template = f"promotions/request_form.html#{part}"
    return render(request, template, context, status=status)


def _check_preview(form: PromotionRequestForm, stage_name: str):
    version = form.chosen_version
    stage = next((s for s in form.allowed_stages if s.name == stage_name), None)
    if version is None or stage is None:
        return None
    rule = policy.tier_rule_for(stage, policy.model_tier(version.model))
    return {
        "stage": stage,
        "results": policy.evaluate_checks(stage, metrics=version.metrics, tags=version.tags),
        "tier_rule": policy.describe_tier_rule(rule, stage=stage) if rule else "",
    }


def _detail_context(
    request: HttpRequest, promotion: PromotionRequest, form: DecisionForm | None = None
) -> dict:
    user = request.user
    reviews = list(promotion.reviews.all())
    approvals = [r for r in reviews if r.decision == "approve" and not r.stale]
    already = any(r.reviewer_id == user.pk and not r.stale for r in reviews)
    may_decide = policy.may_decide(user, promotion, reviews=reviews)
    rules = policy.rules_in_force(promotion)
    signing = rules.signature_required and may_decide
    # Why not, beside a disabled Approve, when the reason is the stage's independence rule.
    refused = None
    if (
        not may_decide
        and promotion.status == PromotionRequest.Status.PENDING
        and promotion.stage.independent_validation
    ):
        refused = policy.decide_refusal(user, promotion)
    return {
        "promotion": promotion,
        "reviews": reviews,
        "approvals": len(approvals),
        "rules": rules,
        "comparison": selectors.comparison(promotion.evidence),
        "timeline": selectors.request_timeline(promotion.pk),
        "may_decide": may_decide,
        # A stage that requires signatures: the form asks for the password and the meaning, and
        # carries a fresh one-time token each time it is drawn.
        "signing": signing,
        "signature_meanings": promotion.stage.approval_meanings() if signing else [],
        "signature_token": signatures.signature_form_token(user=user, request_id=promotion.pk)
        if signing
        else "",
        "rejection_meaning": REJECTION_MEANING,
        "signs_with_provider": signing and reauth.signs_with_provider(user),
        "provider_name": settings.OIDC_PROVIDER_NAME,
        "already_reviewed": already,
        "not_independent": refused.message if refused and refused.code == policy.NOT_INDEPENDENT else "",
        "is_requester": promotion.requested_by_id == user.pk,
        "may_cancel": promotion.status in ("pending", "approved", "scheduled")
        and policy.may_cancel(user, promotion),
        "may_retry": promotion.status == "failed" and policy.is_stage_admin(user),
        "checks_failing": policy.failing(promotion.check_results),
        "approval_blocker": getattr(policy.approval_blocker(promotion), "message", ""),
        "artifacts": selectors.request_artifacts(promotion),
        "form": form or DecisionForm(initial={"evidence_sha256": promotion.evidence_sha256}),
        "retry": selectors.apply_retry(promotion),
        "hold": selectors.request_hold(promotion),
        "polling": promotion.status in PromotionRequest.OPEN_STATUSES,
        "seen": selectors.request_seen_token(promotion.updated_at),
        "poll_key": polling.poll_key(user_id=user.pk, request_id=promotion.pk),
        "may_break_glass": policy.may_break_glass(user, promotion),
        **_emergency_context(user, promotion),
    }


def _emergency_context(user, promotion: PromotionRequest) -> dict:
    """The emergency change's flag and its retrospective review (no query for other requests)."""
    emergency = selectors.emergency_view(promotion)
    if emergency is None:
        return {"emergency": None, "may_review_retrospectively": False}
    return {
        "emergency": emergency,
        "may_review_retrospectively": policy.may_review_retrospectively(
            user, promotion, reviews=emergency.reviews
        ),
    }


@require_GET
def request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    promotion = _get_request_for_user(request, pk)
    context = _detail_context(request, promotion)
    # The full page only: the panel's 3-second poll re-renders no model files and calls no MLflow.
    context["model_comparison"] = selectors.model_comparison(promotion)
    return render(request, "promotions/request_detail.html", context)


@login_not_required  # the page's poll key stands for it on the cheap path; checked below otherwise
@require_GET
def request_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The request panel's poll. Unchanged since the version the page shows (`seen`, or the
    ETag in If-None-Match): one indexed read of the row, answered 204 for htmx (not swapped) or
    304. Changed: the panel, with its new ETag; in a final state also the end of the polling."""
    log_context.bind_promotion_request(pk)
    seen = request.GET.get("seen", "") or request.headers.get("If-None-Match", "").strip('"W/')
    current = None
    # The page's poll key: "unchanged" is answered from the row alone (see promotions/polling.py).
    if seen and polling.poll_key_allows(request.GET.get("key", ""), pk):
        current = selectors.request_seen(pk)
        if current == seen:
            return _unchanged(request, current)
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not policy.has_any_role(request.user):
        raise PermissionDenied(NO_ROLE)
    current = current or selectors.request_seen(pk)
    if current is None:
        raise Http404("No such request.")
    if seen and seen == current:
        return _unchanged(request, current)
    promotion = _get_request_for_user(request, pk)
    context = _detail_context(request, promotion)
    body = render(request, "promotions/request_detail.html#panel", context).content
    # In a final state htmx gets the last panel with 286: swap it, then stop polling.
    final = not context["polling"] and request.htmx
    response = (HttpResponseStopPolling if final else HttpResponse)(body)
    response["ETag"] = f'"{context["seen"]}"'
    return response


def _unchanged(request: HttpRequest, current: str) -> HttpResponse:
    """Nothing changed since the version the page shows: 204 for htmx (nothing swapped), else 304."""
    response = HttpResponse(status=204 if request.htmx else 304)
    response["ETag"] = f'"{current}"'
    return response


def _signature_refused(
    request: HttpRequest, promotion: PromotionRequest, form: DecisionForm, exc
) -> HttpResponse:
    """422, the reason beside the field it is about, in the panel htmx swaps or the whole page."""
    form.add_error(exc.field or None, exc.message)
    promotion = selectors.request_page(promotion.pk)
    context = _detail_context(request, promotion, form=form)
    if request.htmx:
        return render(request, "promotions/request_detail.html#panel", context, status=422)
    context["model_comparison"] = selectors.model_comparison(promotion)
    return render(request, "promotions/request_detail.html", context, status=422)


def _after_action(
    request: HttpRequest, promotion: PromotionRequest, *, error: str = "", form=None
) -> HttpResponse:
    if request.htmx:
        promotion = selectors.request_page(promotion.pk)
        context = _detail_context(request, promotion, form=form)
        context["action_error"] = error
        response = render(request, "promotions/request_detail.html#panel", context, status=200)
        # The queue badge in the frame changes with the decision: swap it out of band.
        badge = render(
            request, "base.html#badge", {"frame": selectors.frame_for_user(request.user), "oob": True}
        )
        response.content += badge.content
        return response
    if error:
        messages.error(request, error)
    return redirect("request_detail", pk=promotion.pk)


@require_POST
def request_decide(request: HttpRequest, pk: int) -> HttpResponse:
    promotion = _get_request_for_user(request, pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _after_action(
            request, promotion, error="Choose Approve or Reject; a comment is at most 10,000 characters."
        )
    data = form.cleaned_data
    approve = data["decision"] == "approve"
    signature = None
    try:
        # Who may decide is asked first: a refusal is a 403 whether or not the stage signs.
        signed = policy.rules_in_force(promotion).signature_required
        if signed and policy.decide_refusal(request.user, promotion) is None:
            reauthentication = None
            if reauth.signs_with_provider(request.user):
                # No password here: the decision waits for a fresh sign-in at the provider.
                key = request.POST.get("reauth_key", "")
                if not key:
                    return reauth.reauthentication_start(request, request_id=promotion.pk, fields=data)
                reauthentication = reauth.proof_take(request, promotion.pk, key) or {}
            signature = signatures.signature_check(
                http_request=request,
                user=request.user,
                promotion=promotion,
                decision=data["decision"],
                token=data["signature_token"],
                password=data["password"],
                meaning=data["meaning"] if approve else REJECTION_MEANING,
                reauthentication=reauthentication,
            )
        if approve:
            services.review_approve(
                request=promotion,
                reviewer=request.user,
                comment=data["comment"],
                evidence_sha256=data["evidence_sha256"] or None,
                signature=signature,
            )
        else:
            services.review_reject(
                request=promotion,
                reviewer=request.user,
                comment=data["comment"],
                evidence_sha256=data["evidence_sha256"] or None,
                signature=signature,
            )
    except SignatureRefused as exc:
        return _signature_refused(request, promotion, form, exc)
    except PromotionError as exc:
        if exc.http_status == 403 and not request.htmx:
            raise PermissionDenied(exc.message) from None
        response = _after_action(request, promotion, error=exc.message, form=form)
        if exc.http_status == 403:
            response.status_code = 403
        return response
    return _after_action(request, promotion)


def _request_action(request: HttpRequest, pk: int, action) -> HttpResponse:
    """Cancel or retry: the service decides and audits; a refusal is a 403, anything else a
    message in the page."""
    promotion = _get_request_for_user(request, pk)
    try:
        action(request=promotion, user=request.user)
    except PromotionError as exc:
        if exc.http_status == 403:
            raise PermissionDenied(exc.message) from None
        return _after_action(request, promotion, error=exc.message)
    return _after_action(request, promotion)


@require_POST
def request_emergency(request: HttpRequest, pk: int) -> HttpResponse:
    """Break-glass: a stage admin applies the request at once, with a reason and a confirmation."""
    promotion = _get_request_for_user(request, pk)
    # Without the confirmation the glass stays whole; whoever may not break it at all is refused
    # (and audited) by the service whatever they sent.
    if policy.break_glass_refusal(request.user, promotion) is None and request.POST.get("confirm") != "yes":
        return _emergency_refused(request, promotion, "Tick the confirmation to apply this request at once.")
    return _emergency_action(
        request,
        promotion,
        lambda: services.request_break_glass(
            request=promotion, user=request.user, reason=request.POST.get("reason", "")
        ),
    )


def _emergency_action(request: HttpRequest, promotion: PromotionRequest, act) -> HttpResponse:
    """Run a break-glass service; a refusal stands beside its form (403 as the site's page)."""
    try:
        act()
    except PromotionError as exc:
        if exc.http_status == 403:
            raise PermissionDenied(exc.message) from None
        return _emergency_refused(request, promotion, exc.message, status=exc.http_status)
    return _after_action(request, promotion)


def _emergency_refused(
    request: HttpRequest, promotion: PromotionRequest, error: str, *, status: int = 422
) -> HttpResponse:
    if not request.htmx:
        messages.error(request, error)
        return redirect("request_detail", pk=promotion.pk)
    response = _after_action(request, promotion, error=error)
    response.status_code = status
    return response


@require_POST
def request_retrospective_review(request: HttpRequest, pk: int) -> HttpResponse:
    promotion = _get_request_for_user(request, pk)
    return _emergency_action(
        request,
        promotion,
        lambda: services.retrospective_review_give(
            request=promotion, reviewer=request.user, comment=request.POST.get("comment", "")
        ),
    )


@require_POST
def request_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _request_action(request, pk, services.request_cancel)


@require_POST
def request_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return _request_action(request, pk, services.request_retry)


@require_GET
def stage_list(request: HttpRequest) -> HttpResponse:
    _require_role(request)
    stages = selectors.stage_catalog()
    context = {
        "stages": [
            {
                "stage": stage,
                "allowed_from": catalog.describe_allowed_from(stage),
                "rules": stage.check_rules(),
                "groups": [g.name for g in stage.approver_groups.all()],
                "windows": change_windows.describe_windows(stage),
                "freezes": selectors.freezes_in_words(stage),
                "tiers": [
                    policy.describe_tier_rule(rule, stage=stage) for rule in stage.risk_tier_rules.all()
                ],
            }
            for stage in stages
        ],
        "may_edit": policy.is_stage_admin(request.user) and request.user.is_staff,
        "review_hours": settings.BREAK_GLASS_REVIEW_HOURS,
        "sso_provider_name": settings.OIDC_PROVIDER_NAME if settings.OIDC_ENABLED else "",
    }
    return render(request, "promotions/stage_list.html", context)


@require_POST
def drift_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    """A stage admin accepts a drift with a comment; the service checks the role and audits."""
    _require_role(request)
    event = DriftEvent.objects.select_related("model").filter(pk=pk).first()
    if event is None:
        raise Http404("No such drift.")
    try:
        enforcement.drift_acknowledge(
            event=event, actor=request.user, comment=request.POST.get("comment", "")
        )
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None
    except PromotionError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Drift acknowledged.")
    return redirect("model_detail", name=event.model.name)


@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    _require_role(request)
    try:
        query = parse_text(request.GET.get("q", ""), name="search", max_length=256)
    except ValidationError as error:
        return bad_input(request, error, back="model_list")
    page = Paginator(mirror.model_list(query=query), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "query": query, "last_sync": mirror.last_successful_sync()}
    template = "promotions/model_list.html#rows" if request.htmx else "promotions/model_list.html"
    return render(request, template, context)


def _model_or_404(request: HttpRequest, name: str):
    _require_role(request)
    model = mirror.model_by_name(name)
    if model is None:
        raise Http404(f"No model named {name!r} in the mirror.")
    return model


@require_GET
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = _model_or_404(request, name)
    page = Paginator(mirror.model_versions(model), PAGE_SIZE).get_page(request.GET.get("page"))
    view = mirror.model_page(model)
    context = {
        "view": view,
        "drift": selectors.drift_items(view.drift),
        "may_acknowledge": policy.is_stage_admin(request.user),
        "page": page,
        "last_sync": mirror.last_successful_sync(),
        "history": selectors.stage_history(model),
    }
    return render(request, "promotions/model_detail.html", context)


# --- stage history -----------------------------------------------------------------------------


@require_GET
def model_history(request: HttpRequest, name: str) -> HttpResponse:
    model = _model_or_404(request, name)
    context = {"history": history.model_history(model), "may_export": policy.is_auditor(request.user)}
    return render(request, "promotions/model_history.html", context)


HOLDERS_COLUMNS = (
    "model_name", "stage", "binding", "version", "since", "via",
    "request_id", "drift_event_id", "audit_sequence", "requested_by", "approved_by",
)  # fmt: skip


@require_GET
def holders_export_csv(request: HttpRequest) -> HttpResponse:
    """`GET /api/holders` as a CSV file for auditors: which version of every model held a stage
    at a time. Escaped like the audit log's CSV export, and itself an `audit.exported` entry."""
    if not policy.is_auditor(request.user):
        record_denied(actor=request.user, what="export the holders of a stage", reason="not an auditor")
        raise PermissionDenied("Only auditors export the audit log and what it shows.")
    try:
        moment = history.parse_moment(parse_text(request.GET.get("at", ""), name="time", max_length=64))
        stage = catalog.stage_get_by_name(
            parse_text(request.GET.get("stage", ""), name="stage", max_length=64)
        )
    except ValidationError as exc:
        return HttpResponseBadRequest(f"{' '.join(exc.messages)}\n", content_type="text/plain; charset=utf-8")
    except ValueError as exc:
        return HttpResponseBadRequest(f"at: {exc}\n", content_type="text/plain; charset=utf-8")
    except PromotionError as exc:
        return HttpResponseBadRequest(f"{exc.message}\n", content_type="text/plain; charset=utf-8")
    rows = history.holders_at(moment, stage)
    exports.record_report_export(
        actor=request.user,
        report="holders",
        meaning=f"Exported which version of every model held {stage.name} at {utc_iso(moment)} as CSV",
        details={"at": utc_iso(moment), "stage": stage.name, "rows": len(rows)},
        fmt="csv",
        via="web",
    )
    lines = [exports.csv_record(HOLDERS_COLUMNS)]
    for row in rows:
        source = row.interval.source
        cells = (
            row.model_name,
            stage.name,
            row.interval.binding.label,
            str(row.interval.version),
            utc_iso(row.interval.since),
            source.kind,
            *(
                "" if n is None else str(n)
                for n in (source.request_id, source.drift_event_id, source.audit_sequence)
            ),
            source.requested_by,
            ";".join(source.approved_by),
        )
        lines.append(exports.csv_record(cells))
    response = StreamingHttpResponse(iter(lines), content_type="text/csv; charset=utf-8")
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="holders-{slugify(stage.name)}-{stamp}.csv"'
    return response


def _digits(number: int | None) -> str:
    return "" if number is None else str(number)
