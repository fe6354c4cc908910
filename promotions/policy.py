"""Who may do what, and the check rules of a stage.

Views, the API, the CLI and the services never decide permissions themselves: they ask here,
and the services refuse and audit.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Lower

from promotions import roles
from promotions.errors import ManifestFailed, ManifestPending
from promotions.models import (
    MAX_TIER,
    ManifestState,
    Profile,
    PromotionRequest,
    RetrospectiveReview,
    Review,
    RiskTierRule,
    Stage,
)

# --- roles ------------------------------------------------------------------------------------


def may_request(user) -> bool:
    return any(roles.has_role(user, role) for role in (roles.REQUESTERS, roles.REVIEWERS, roles.STAGE_ADMINS))


def is_stage_admin(user) -> bool:
    return roles.has_role(user, roles.STAGE_ADMINS)


def is_auditor(user) -> bool:
    return roles.has_role(user, roles.AUDITORS)


def in_approver_groups(user, stage: Stage) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    group_ids = {group.pk for group in stage.approver_groups.all()}
    return bool(group_ids) and user.groups.filter(pk__in=group_ids).exists()


def may_approve_for(user, request: PromotionRequest) -> bool:
    """In the stage's approver groups now and, the stricter policy, in those it had when the
    request was filed (requests filed before that was recorded have no such list)."""
    if not in_approver_groups(user, request.stage):
        return False
    filed_with = {group.pk for group in request.approver_groups_at_filing.all()}
    return not filed_with or user.groups.filter(pk__in=filed_with).exists()


@dataclass(frozen=True)
class Refusal:
    reason: str  # for the audit log
    message: str  # for the person refused
    code: str = "forbidden"  # for the API: what a pipeline may tell apart


NOT_INDEPENDENT = "not_independent"


def mlflow_names(user) -> set[str]:
    """The names MLflow may know `user` by, lower-cased: the username, and the profile's
    MLflow user when one is set."""
    names = {user.get_username().lower()}
    profile = Profile.objects.filter(user_id=user.pk).values_list("mlflow_user", flat=True).first()
    if profile and profile.strip():
        names.add(profile.strip().lower())
    return names


def authorship(user, version) -> str:
    """The MLflow user by which `user` is an author of `version` ("" when they are not one): the
    version's own user_id, or its run's user, compared without case."""
    authors = [name for name in (version.user_id, version.run_user) if name and name.strip()]
    if not authors:
        return ""
    names = mlflow_names(user)
    return next((name for name in authors if name.strip().lower() in names), "")


def _reviewer_authored(version) -> Q:
    """SQL for "the review's reviewer made `version`": the twin of `authorship` over reviews."""
    authored = Q(pk__in=[])
    for name in {n for n in (version.user_id, version.run_user) if n and n.strip()}:
        authored |= Q(reviewer__username__iexact=name) | Q(
            reviewer__promotions_profile__mlflow_user__iexact=name
        )
    return authored


def _authored_by(user):
    """SQL for "the request's version was made by `user`": the twin of `authorship`."""
    username = user.get_username()
    # Lower() = Lower(), not iexact: iexact against a column is a LIKE whose '_' matches anything.
    profile = (
        Profile.objects.filter(user_id=user.pk).exclude(mlflow_user="").annotate(name=Lower("mlflow_user"))
    )
    return (
        Q(version__user_id__iexact=username)
        | Q(version__run_user__iexact=username)
        | Exists(profile.filter(name=Lower(OuterRef("version__user_id"))))
        | Exists(profile.filter(name=Lower(OuterRef("version__run_user"))))
    )


def decide_refusal(user, request: PromotionRequest) -> Refusal | None:
    """Why `user` may not approve or reject `request`, or None when they may.

    Status and an earlier review are the service's to answer under its row lock (the answer
    there is "already decided", not "not allowed"); `may_decide` adds them for the pages.
    """
    if request.requested_by_id is not None and request.requested_by_id == user.pk:
        return Refusal("own request", "You cannot review your own request.")
    if not may_approve_for(user, request):
        groups = ", ".join(g.name for g in request.stage.approver_groups.all()) or "nobody"
        return Refusal(
            "not an approver of the stage",
            f"Only members of {groups} may review requests to {request.stage.name}.",
        )
    if request.stage.independent_validation:
        author = authorship(user, request.version)
        if author:
            # Rejecting is refused as well: the author takes no part in the decision (README).
            return Refusal(
                "author of the version",
                f"You are the author of this version (MLflow user '{author}'); "
                f"{request.stage.name} needs an independent validator.",
                NOT_INDEPENDENT,
            )
    return None


def may_decide(user, request: PromotionRequest, *, reviews: list[Review] | None = None) -> bool:
    """`user` may approve or reject `request` now: the one rule behind the request page's
    buttons, the bulk actions, the services and `decidable_requests` (the queue's SQL)."""
    if request.status != PromotionRequest.Status.PENDING:
        return False
    if not getattr(user, "is_authenticated", False) or decide_refusal(user, request) is not None:
        return False
    if reviews is None:
        return not Review.objects.filter(request=request, reviewer=user, stale=False).exists()
    return not any(r.reviewer_id == user.pk and not r.stale for r in reviews)


def approval_blocker(request: PromotionRequest) -> ManifestPending | ManifestFailed | None:
    """Why no approval can be given yet because of the model's files (None when none)."""
    if request.manifest_state == ManifestState.COMPUTING:
        return ManifestPending(
            "The model files' digest is still being computed; approval is possible once it is recorded."
        )
    if request.manifest_state == ManifestState.FAILED:
        return ManifestFailed(
            f"The model files could not be recorded, so this request cannot be approved: "
            f"{request.manifest_error}"
        )
    return None


# --- risk tiers -------------------------------------------------------------------------------


def normalize_tier(value: object) -> str:
    """A tier as the catalog compares it: trimmed, lower-case. A value longer than any tier can
    be is cut and marked ("…"), so it is shown short and matches no rule."""
    if not isinstance(value, str):
        return ""
    text = value.strip().lower()
    return text if len(text) <= MAX_TIER else text[: MAX_TIER - 1] + "…"


def model_tier(model) -> str:
    """The registered model's risk tier, from its mirrored tags ("" when it has none)."""
    tags = model.tags if isinstance(model.tags, dict) else {}
    return normalize_tier(tags.get(settings.RISK_TIER_TAG, ""))


def tier_rule_for(stage: Stage, tier: str) -> RiskTierRule | None:
    """The stage's rule for `tier`, or None (no tier, or one the catalog does not name: the
    stage's own rules apply). Reads the prefetched rules when the caller prefetched them."""
    if not tier:
        return None
    if "risk_tier_rules" in getattr(stage, "_prefetched_objects_cache", {}):
        return next((rule for rule in stage.risk_tier_rules.all() if rule.tier == tier), None)
    return stage.risk_tier_rules.select_related("required_group").filter(tier=tier).first()


def tier_rule_snapshot(rule: RiskTierRule | None) -> dict | None:
    """A rule as a request records it at filing (it outlives a later change of the catalog)."""
    if rule is None:
        return None
    group = rule.required_group
    return {
        "approvals": rule.min_approvals,
        "group_id": group.pk if group else None,
        "group": group.name if group else "",
        "signature": rule.signature_required,
    }


def describe_rule(*, approvals: int, groups: list[str] | tuple[str, ...], signed: bool) -> str:
    """A rule in words: "3 approvals, at least one from Model validators, signed"."""
    if approvals:
        words = [f"{approvals} approval{'' if approvals == 1 else 's'}"]
    else:
        words = [] if groups or signed else ["no approval"]
    words += [f"at least one from {name}" for name in groups]
    if signed:
        words.append("signed")
    return ", ".join(words)


def describe_tier_rule(rule: RiskTierRule, *, stage: Stage) -> str:
    """A catalog rule as the stage page states it: what a model of the tier needs on the stage."""
    approvals = max(rule.min_approvals, stage.required_approvals, 1 if rule.required_group_id else 0)
    groups = [rule.required_group.name] if rule.required_group_id else []
    signed = rule.signature_required or stage.signature_required
    return f"Models tagged {settings.RISK_TIER_TAG}={rule.tier} need " + describe_rule(
        approvals=approvals, groups=groups, signed=signed
    )


@dataclass(frozen=True)
class RulesInForce:
    """What a request needs now: the stricter of the stage's rules (at filing and now), the rule
    of the model's tier when the request was filed (as recorded then and as the catalog says
    now) and the rule of the model's tier now."""

    tier: str  # the model's tier now ("" none)
    tier_at_filing: str
    approvals: int
    required_groups: tuple[tuple[int, str], ...]  # (group id, name)
    signature_required: bool
    sentences: tuple[str, ...]  # where each part comes from, in words

    @property
    def summary(self) -> str:
        return describe_rule(
            approvals=self.approvals,
            groups=[name for _, name in self.required_groups],
            signed=self.signature_required,
        )

    @property
    def tier_label(self) -> str:
        """The tier as a page shows it: "high", "high (filed as low)", or "none"."""
        label = self.tier or "none"
        if self.tier_at_filing != self.tier:
            label += f" (filed as {self.tier_at_filing or 'none'})"
        return label


def rules_in_force(request: PromotionRequest) -> RulesInForce:
    """The one answer to "what does this request need": approvals, required groups, signature.

    Costs no query when the caller loaded `version__model`, `stage` and prefetched
    `stage__risk_tier_rules__required_group`; otherwise one or two (the tiers' rules)."""
    stage = request.stage
    approvals = max(request.required_approvals_at_filing or 0, stage.required_approvals)
    signed = stage.signature_required
    groups: dict[int, str] = {}
    sentences = [f"Stage {stage.name}: " + describe_rule(approvals=approvals, groups=(), signed=signed)]
    tier_now = model_tier(request.version.model)
    tier_then = request.risk_tier_at_filing or ""
    parts: list[tuple[str, dict]] = []
    if request.risk_rule_at_filing:
        parts.append((f"Tier {tier_then} when filed", request.risk_rule_at_filing))
    for tier, label in (
        (tier_then, f"Tier {tier_then} in the catalog now"),
        (tier_now, f"Tier {tier_now} now"),
    ):
        rule = tier_rule_snapshot(tier_rule_for(stage, tier))
        if rule is not None and all(rule != seen for _, seen in parts):
            parts.append((label, rule))
    for label, rule in parts:
        needed = int(rule.get("approvals") or 0)
        group_names = [str(rule.get("group") or "")] if rule.get("group_id") else []
        approvals = max(approvals, needed)
        signed = signed or bool(rule.get("signature"))
        if rule.get("group_id"):
            groups[int(rule["group_id"])] = group_names[0]
        sentences.append(
            f"{label}: "
            + describe_rule(approvals=needed, groups=group_names, signed=bool(rule.get("signature")))
        )
    if groups:
        # Someone from each required group must approve: never fewer than one approval.
        approvals = max(approvals, 1)
    return RulesInForce(
        tier=tier_now,
        tier_at_filing=tier_then,
        approvals=approvals,
        required_groups=tuple(sorted(groups.items())),
        signature_required=signed,
        sentences=tuple(sentences),
    )


def required_approvals(request: PromotionRequest) -> int:
    """The stricter of the counts the request was filed under and the counts now (stage and tier)."""
    return rules_in_force(request).approvals


def groups_missing(
    request: PromotionRequest, approvals: list[Review], rules: RulesInForce | None = None
) -> list[str]:
    """The required groups (by name) that no counting approval comes from; no query when the
    rules name none."""
    rules = rules or rules_in_force(request)
    if not rules.required_groups:
        return []
    reviewer_ids = [review.reviewer_id for review in approvals if review.reviewer_id is not None]
    present = (
        set(
            get_user_model()
            .groups.through.objects.filter(
                user_id__in=reviewer_ids, group_id__in=[pk for pk, _ in rules.required_groups]
            )
            .values_list("group_id", flat=True)
        )
        if reviewer_ids
        else set()
    )
    return [name for pk, name in rules.required_groups if pk not in present]


def approval_shortfall(request: PromotionRequest, approvals: list[Review] | None = None) -> str:
    """Why the counting approvals do not yet complete `request`, in words ("" when they do)."""
    rules = rules_in_force(request)
    approvals = counting_approvals(request) if approvals is None else approvals
    if len(approvals) < rules.approvals:
        return f"{len(approvals)} of the {rules.approvals} approvals needed still count"
    missing = groups_missing(request, approvals, rules)
    if missing:
        return "no approval that counts comes from " + ", ".join(missing) + " yet"
    return ""


def approval_counts(review: Review, request: PromotionRequest) -> bool:
    """A live approval by someone who may still approve: active, and in the stage's approver
    groups now. An approver who left (deactivated, or removed from the groups) stops counting."""
    reviewer = review.reviewer
    return (
        review.decision == Review.Decision.APPROVE
        and not review.stale
        and reviewer is not None
        and reviewer.is_active
        and may_approve_for(reviewer, request)
        and not (request.stage.independent_validation and authorship(reviewer, request.version))
    )


def counting_approvals(request: PromotionRequest) -> list[Review]:
    """The approvals for which `approval_counts` holds, in one query whatever the number of
    reviewers: membership of the stage's groups and of the filing-time groups, and on a stage
    with independent validators authorship of the version, are asked in SQL."""
    memberships = get_user_model().groups.through.objects.filter(user_id=OuterRef("reviewer_id"))
    stage_groups = Stage.approver_groups.through.objects.filter(stage_id=request.stage_id)
    filed_with = PromotionRequest.approver_groups_at_filing.through.objects.filter(
        promotionrequest_id=request.pk
    )
    reviews = Review.objects.filter(
        request=request, decision=Review.Decision.APPROVE, stale=False, reviewer__is_active=True
    )
    if request.stage.independent_validation:
        # An approval the version's author gave before the stage asked for independence stops counting.
        reviews = reviews.exclude(_reviewer_authored(request.version))
    return list(
        reviews.filter(Exists(memberships.filter(group_id__in=stage_groups.values("group_id"))))
        .filter(~Exists(filed_with) | Exists(memberships.filter(group_id__in=filed_with.values("group_id"))))
        .select_related("reviewer")
        .order_by("created_at", "pk")
    )


# --- break-glass ------------------------------------------------------------------------------


def break_glass_refusal(user, request: PromotionRequest) -> Refusal | None:
    """Why `user` may not apply `request` at once as an emergency change, or None when they may.

    Stage admins only, their own requests included (the requester and whoever broke the glass
    are both kept out of the retrospective review). Status is the service's to answer under its
    row lock.
    """
    if not is_stage_admin(user):
        return Refusal("not a stage admin", "Only stage admins may apply a request at once in an emergency.")
    if not request.stage.emergency_allowed:
        return Refusal(
            "the stage allows no emergency changes",
            f"{request.stage.name} allows no emergency changes: its requests wait for their approvals.",
        )
    return None


def may_break_glass(user, request: PromotionRequest) -> bool:
    """The request page's "Apply now (emergency)" form is shown: a pending request, and a user
    `break_glass_refusal` lets through."""
    return (
        request.status in PromotionRequest.EMERGENCY_FROM
        and getattr(user, "is_authenticated", False)
        and break_glass_refusal(user, request) is None
    )


def retrospective_refusal(user, request: PromotionRequest) -> Refusal | None:
    """Why `user`'s retrospective review of `request` would not count, or None when it would:
    an approver of the stage, neither the one who broke the glass nor the requester. Whether the
    request was an emergency change at all is the service's to answer (a 422, not a 403)."""
    if request.emergency_by_id is not None and request.emergency_by_id == user.pk:
        return Refusal("broke the glass", "You applied this emergency change; other approvers review it.")
    if request.requested_by_id is not None and request.requested_by_id == user.pk:
        return Refusal("own request", "You cannot review your own request.")
    if not getattr(user, "is_active", False) or not may_approve_for(user, request):
        groups = ", ".join(g.name for g in request.stage.approver_groups.all()) or "nobody"
        return Refusal(
            "not an approver of the stage",
            f"Only members of {groups} review emergency changes to {request.stage.name}.",
        )
    return None


def may_review_retrospectively(
    user, request: PromotionRequest, *, reviews: list[RetrospectiveReview] | None = None
) -> bool:
    """The retrospective review form is shown: owed, and `user` may give one not given yet."""
    if not request.is_emergency or request.review_completed_at is not None:
        return False
    if not getattr(user, "is_authenticated", False) or retrospective_refusal(user, request) is not None:
        return False
    if reviews is None:
        return not RetrospectiveReview.objects.filter(request=request, reviewer=user).exists()
    return not any(r.reviewer_id == user.pk for r in reviews)


def retrospective_reviewable(user) -> QuerySet[PromotionRequest]:
    """The emergency changes whose review is still owed and that `user` may review now, as one
    query (the queue's section): the SQL twin of `may_review_retrospectively`."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return PromotionRequest.objects.none()
    # A subquery, not a list read first: the queue pays one query for this section.
    stage_ids = Stage.approver_groups.through.objects.filter(group__user=user).values("stage_id")
    owed = PromotionRequest.objects.filter(emergency_at__isnull=False, review_completed_at__isnull=True)
    filed_with = PromotionRequest.approver_groups_at_filing.through.objects.filter(promotionrequest__in=owed)
    reviewed = RetrospectiveReview.objects.filter(reviewer=user).values("request_id")
    return (
        owed.filter(stage_id__in=stage_ids)
        .filter(
            ~Q(pk__in=filed_with.values("promotionrequest_id"))
            | Q(pk__in=filed_with.filter(group__user=user).values("promotionrequest_id"))
        )
        .exclude(requested_by=user)
        .exclude(emergency_by=user)
        .exclude(pk__in=reviewed)
    )


def may_cancel(user, request: PromotionRequest) -> bool:
    return request.requested_by_id == user.pk or is_stage_admin(user)


def has_any_role(user) -> bool:
    """Any role of the product (or a superuser) reads requests, stages and models."""
    return bool(roles.role_names(user)) or bool(getattr(user, "is_superuser", False))


def may_view_request(user, request: PromotionRequest) -> bool:
    # Requests are shared work: every signed-in member of a role reads them.
    return has_any_role(user)


def decidable_requests(user) -> QuerySet[PromotionRequest]:
    """The requests for which `may_decide(user, request)` holds, as one query.

    The stages `user` approves for are read first (one small query): a user who approves for
    none gets an empty queryset and no count at all, and the main query filters on a list of
    stage ids instead of a correlated lookup per request. Filing-time groups are two
    uncorrelated subqueries over pending requests only.
    """
    if not getattr(user, "is_authenticated", False):
        return PromotionRequest.objects.none()
    stage_ids = list(
        Stage.approver_groups.through.objects.filter(group__user=user)
        .values_list("stage_id", flat=True)
        .distinct()
    )
    if not stage_ids:
        return PromotionRequest.objects.none()
    pending = PromotionRequest.Status.PENDING
    filed_with = PromotionRequest.approver_groups_at_filing.through.objects.filter(
        promotionrequest__status=pending
    )
    already_reviewed = Review.objects.filter(reviewer=user, stale=False).values("request_id")
    return (
        PromotionRequest.objects.filter(status=pending, stage_id__in=stage_ids)
        .filter(
            ~Q(pk__in=filed_with.values("promotionrequest_id"))
            | Q(pk__in=filed_with.filter(group__user=user).values("promotionrequest_id"))
        )
        .exclude(requested_by=user)
        .exclude(pk__in=already_reviewed)
        .exclude(Q(stage__independent_validation=True) & _authored_by(user))
    )


# --- check rules ------------------------------------------------------------------------------

_OPERATORS = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_RULE = re.compile(
    r"^(?P<source>metric|tag|evidence)\s+(?P<key>\S+)\s+"
    r"(?:(?P<exists>exists)|(?P<op>>=|<=|==|!=|>|<)\s+(?P<value>.+))$"
)


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    text: str
    source: str
    key: str
    op: str  # one of _OPERATORS, or "exists"
    value: str


@dataclass(frozen=True)
class CheckResult:
    rule: str
    passed: bool
    actual: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_rule(text: str) -> Rule:
    text = " ".join(text.split())
    match = _RULE.match(text)
    if not match:
        raise RuleError(
            f"'{text}' is not a check rule. Write 'metric <key> <op> <number>' (op one of "
            ">= > <= < == !=), 'tag <key> == <value>', 'tag <key> exists' or "
            "'evidence <key> <op> <value>'."
        )
    source, key = match["source"], match["key"]
    if match["exists"]:
        if source == "metric":
            raise RuleError(f"'{text}': 'exists' works on tags and evidence, not metrics.")
        return Rule(text, source, key, "exists", "")
    op, value = match["op"], match["value"].strip()
    if source == "metric":
        try:
            number = float(value)
        except ValueError:
            raise RuleError(f"'{text}': metric rules compare with a number, not '{value}'.") from None
        if math.isnan(number):
            raise RuleError(f"'{text}': NaN cannot be compared.")
    if source == "tag" and op not in ("==", "!="):
        raise RuleError(f"'{text}': tag rules use == or != (or 'exists').")
    return Rule(text, source, key, op, value)


def _coerce(value: Any) -> Any:
    """Evidence values arrive as JSON: compare numbers as numbers, booleans as words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def evaluate_rule(
    rule: Rule, *, metrics: dict[str, float], tags: dict[str, str], evidence: dict[str, Any]
) -> CheckResult:
    source = {"metric": metrics, "tag": tags, "evidence": evidence}[rule.source]
    if rule.key not in source:
        return CheckResult(rule.text, False, "", f"{rule.source} '{rule.key}' is missing")
    actual = _coerce(source[rule.key])
    if rule.op == "exists":
        return CheckResult(rule.text, True, str(actual), "present")
    compare = _OPERATORS[rule.op]
    try:
        passed = compare(float(actual), float(rule.value))
    except (TypeError, ValueError):
        if rule.op not in ("==", "!="):
            return CheckResult(rule.text, False, str(actual), f"'{actual}' is not a number")
        passed = compare(str(actual).strip().lower(), rule.value.strip().lower())
    return CheckResult(rule.text, passed, str(actual), "passed" if passed else "failed")


def evaluate_checks(
    stage: Stage, *, metrics: dict, tags: dict, evidence: dict | None = None
) -> list[CheckResult]:
    results = []
    for line in stage.check_rules():
        try:
            rule = parse_rule(line)
        except RuleError as exc:
            results.append(CheckResult(line, False, "", str(exc)))
            continue
        results.append(evaluate_rule(rule, metrics=metrics, tags=tags, evidence=evidence or {}))
    return results


def failing(results: list[dict] | list[CheckResult]) -> list[str]:
    out = []
    for result in results:
        data = result.as_dict() if isinstance(result, CheckResult) else result
        if not data["passed"]:
            actual = f" (is {data['actual']})" if data["actual"] else f" ({data['message']})"
            out.append(f"{data['rule']}{actual}")
    return out
