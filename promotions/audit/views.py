"""Pages for auditors: the log with filters, its exports and manifests, lead-time charts, the
access review.

Every view starts with `_require_auditor`: anyone else gets 403, and the attempt is itself an
audit entry (`auth.denied`).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from promotions import metrics, policy, selectors
from promotions.audit import access, exports, filters, verify
from promotions.audit.format import utc_iso
from promotions.audit.log import chain_head, record_denied
from promotions.models import Stage

PAGE_SIZE = 50
_CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}


def _require_auditor(request: HttpRequest, *, what: str) -> None:
    if policy.is_auditor(request.user):
        return
    record_denied(actor=request.user, what=what, reason="not an auditor")
    raise PermissionDenied("Only auditors read and export the audit log.")


def _export_params(request: HttpRequest) -> tuple[filters.AuditFilter, int | None]:
    """The filters, and `through`: the last entry an export may hold (the page's chain head)."""
    through = filters.parse_sequence(request.GET.get("through"), name="through")
    return filters.parse_filter(request.GET), through


@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    _require_auditor(request, what="read the audit log")
    values = {name: request.GET.get(name, "").strip() for name in filters.FILTER_FIELDS}
    context = {"values": values, "actions": filters.KNOWN_ACTIONS, "error": "", "page": None}
    try:
        audit_filter = filters.parse_filter(request.GET)
        before = filters.parse_sequence(request.GET.get("before"), name="before")
        after = filters.parse_sequence(request.GET.get("after"), name="after")
    except filters.FilterError as exc:
        context["error"] = str(exc)
        audit_filter = None
    if audit_filter is not None:
        head = chain_head()
        context.update(
            page=filters.log_page(audit_filter, before=before, after=after, size=PAGE_SIZE),
            query=audit_filter.query_string(),
            # Exports and manifests end where this page's view of the log ends, so the file
            # downloaded now and the manifest asked for later describe the same entries.
            export_query=audit_filter.query_string(through=head[0]),
            chain=verify.chain_status(head),
            filtered=not audit_filter.is_empty,
        )
    context["stages"] = list(Stage.objects.values_list("name", flat=True))
    context["overdue_reviews"] = selectors.overdue_reviews().count()
    if request.htmx:
        response = render(request, "promotions/audit_log.html#audit-results", context)
    else:
        response = render(request, "promotions/audit_log.html", context)
    if context["error"]:
        # With htmx the results fragment carries the reason, under the filters (base.html has
        # htmx swap 4xx answers).
        response.status_code = 400
    return response


def _export(request: HttpRequest, fmt: str) -> HttpResponse:
    _require_auditor(request, what=f"export the audit log as {fmt.upper()}")
    try:
        audit_filter, through = _export_params(request)
    except filters.FilterError as exc:
        return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")
    cut = exports.export_cut(audit_filter, through=through)
    # Recorded before the first byte: an export the reader abandons half-way was still taken.
    exports.record_export(actor=request.user, cut=cut, fmt=fmt, via="web")
    response = StreamingHttpResponse(exports.iter_export(cut, fmt=fmt), content_type=_CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="{exports.export_filename(cut, fmt=fmt)}"'
    response["X-Audit-Through"] = str(cut.through)
    return response


@require_GET
def audit_export_csv(request: HttpRequest) -> HttpResponse:
    return _export(request, "csv")


@require_GET
def audit_export_jsonl(request: HttpRequest) -> HttpResponse:
    return _export(request, "jsonl")


@require_GET
def audit_manifest(request: HttpRequest) -> HttpResponse:
    """The manifest of the export with the same filters and `through`; it hashes the export."""
    _require_auditor(request, what="read an audit log manifest")
    fmt = request.GET.get("format", "")
    if fmt not in exports.EXPORT_FORMATS:
        return JsonResponse({"error": f"format must be csv or jsonl, not '{fmt[:20]}'."}, status=400)
    try:
        audit_filter, through = _export_params(request)
    except filters.FilterError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    cut = exports.export_cut(audit_filter, through=through)
    response = JsonResponse(exports.manifest_for(cut, fmt=fmt), json_dumps_params={"indent": 2})
    filename = exports.manifest_path(exports.export_filename(cut, fmt=fmt)).name
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
def audit_metrics(request: HttpRequest) -> HttpResponse:
    _require_auditor(request, what="read the lead-time dashboard")
    return render(
        request,
        "promotions/audit_metrics.html",
        {"stages": metrics.lead_times(weeks=metrics.WEEKS), "weeks": metrics.WEEKS},
    )


# --- access review ------------------------------------------------------------------------------

CHANGES_ON_PAGE = 500  # the newest of the period; the CSV holds them all
ACCESS_COLUMNS = (
    "username", "name", "active", "sign_in", "roles", "role_grants", "other_groups",
    "last_sign_in", "last_action_at", "last_action", "api_tokens",
)  # fmt: skip
CHANGE_COLUMNS = (
    "sequence",
    "time",
    "actor_username",
    "actor_name",
    "username",
    "change",
    "role",
    "via",
    "meaning",
)


def _utc(moment) -> str:
    return "" if moment is None else utc_iso(moment)


def _grant_text(grant: access.Grant) -> str:
    if grant.since is None:
        return f"{grant.group}: {grant.unknown}"
    by = grant.granted_by + (f" ({grant.granted_by_username})" if grant.granted_by_username else "")
    return f"{grant.group}: since {utc_iso(grant.since)} by {by} (entry #{grant.sequence})"


def _access_cells(row: access.AccessRow) -> tuple[str, ...]:
    return (
        row.username,
        row.name,
        "yes" if row.active else "no",
        row.sign_in,
        ";".join(row.role_names),
        ";".join(_grant_text(grant) for grant in row.roles),
        ";".join(_grant_text(grant) for grant in row.groups),
        _utc(row.last_sign_in),
        _utc(row.last_action_at),
        row.last_action,
        str(row.tokens),
    )


def _change_cells(change: access.RoleChange) -> tuple[str, ...]:
    return (
        str(change.sequence),
        utc_iso(change.at),
        change.actor_username,
        change.actor,
        change.username,
        change.change,
        change.role,
        change.via,
        change.meaning,
    )


def _bad_period(exc: access.PeriodError) -> HttpResponse:
    return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")


@require_GET
def audit_access(request: HttpRequest) -> HttpResponse:
    """Who holds which role, since when and granted by whom; the role changes in a period."""
    _require_auditor(request, what="read the access review")
    context = {"rows": access.access_rows(), "error": "", "changes": [], "period": None}
    try:
        period = access.parse_period(request.GET)
    except access.PeriodError as exc:
        context["error"] = str(exc)
        context["values"] = {name: str(request.GET.get(name, ""))[:40] for name in ("from", "until")}
    else:
        changes = access.role_changes(period.since, period.until, limit=CHANGES_ON_PAGE + 1)
        context.update(
            period=period,
            values={"from": period.start.isoformat(), "until": period.end.isoformat()},
            changes=changes[:CHANGES_ON_PAGE],
            more_changes=len(changes) > CHANGES_ON_PAGE,
            changes_query=urlencode({"from": period.start.isoformat(), "until": period.end.isoformat()}),
        )
    response = render(request, "promotions/audit_access.html", context)
    if context["error"]:
        response.status_code = 400
    return response


@require_GET
def audit_access_csv(request: HttpRequest) -> HttpResponse:
    _require_auditor(request, what="export the access review")
    rows = access.access_rows()
    exports.record_report_export(
        actor=request.user,
        report="access",
        meaning=f"Exported the access review (every user, roles and activity) as CSV, {len(rows)} users",
        details={"rows": len(rows)},
        fmt="csv",
        via="web",
    )
    lines = (exports.csv_record(cells) for cells in (ACCESS_COLUMNS, *map(_access_cells, rows)))
    response = StreamingHttpResponse(lines, content_type=_CONTENT_TYPES["csv"])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="access-review-{stamp}.csv"'
    return response


@require_GET
def audit_access_changes_csv(request: HttpRequest) -> HttpResponse:
    _require_auditor(request, what="export the role changes")
    try:
        period = access.parse_period(request.GET)
    except access.PeriodError as exc:
        return _bad_period(exc)
    first, last = period.start.isoformat(), period.end.isoformat()
    exports.record_report_export(
        actor=request.user,
        report="role_changes",
        meaning=f"Exported the role changes from {first} to {last} (UTC days) as CSV",
        details={"from": first, "until": last},
        fmt="csv",
        via="web",
    )

    def lines():
        yield exports.csv_record(CHANGE_COLUMNS)
        for change in access.iter_role_changes(period.since, period.until):
            yield exports.csv_record(_change_cells(change))

    response = StreamingHttpResponse(lines(), content_type=_CONTENT_TYPES["csv"])
    response["Content-Disposition"] = f'attachment; filename="role-changes-{first}-to-{last}.csv"'
    return response


@require_GET
def audit_emergencies(request: HttpRequest) -> HttpResponse:
    """Every emergency change (break-glass) with the state of its retrospective review."""
    _require_auditor(request, what="read the emergency changes")
    changes = selectors.emergency_changes()
    context = {"changes": changes, "overdue": sum(1 for change in changes if change.overdue)}
    return render(request, "promotions/audit_emergencies.html", context)
