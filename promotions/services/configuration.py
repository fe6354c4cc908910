"""Changes to the configuration: the stage catalog and the outbound webhook endpoints.

Each save or delete is one transaction with its audit entry, which carries what changed
(before and after) and never a webhook's secret. The Django admin calls these; nothing else
writes stages or endpoints.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django import forms
from django.db import transaction

from promotions import audit, notifications
from promotions.models import RiskTierRule, Stage, WebhookEndpoint

STAGE_FIELDS = (
    "name",
    "position",
    "description",
    "mlflow_stage",
    "mlflow_alias",
    "archive_existing",
    "allow_from_none",
    "required_approvals",
    "checks",
    "request_ttl",
    "is_active",
    "enforcement",
    "signature_required",
    "signature_meanings",
    "window_time_zone",
    "deployment_windows",
    "emergency_allowed",
    "escalate_after",
    "independent_validation",
)


# How a change's meaning names a part of the stage that is not one of its columns.
_FIELD_WORDS = {"risk_tiers": "risk tier rules"}


def stage_snapshot(stage: Stage) -> dict:
    data = {name: getattr(stage, name) for name in STAGE_FIELDS}
    data["request_ttl"] = str(data["request_ttl"])
    data["escalate_after"] = str(data["escalate_after"]) if data["escalate_after"] is not None else None
    data["allowed_from"] = sorted(s.name for s in stage.allowed_from.all())
    data["approver_groups"] = sorted(g.name for g in stage.approver_groups.all())
    data["risk_tiers"] = {
        rule.tier: {
            "approvals": rule.min_approvals,
            "group": rule.required_group.name if rule.required_group_id else "",
            "signature": rule.signature_required,
        }
        for rule in RiskTierRule.objects.filter(stage=stage).select_related("required_group")
    }
    return data


def stage_save(*, form: forms.ModelForm, actor, tier_rules: forms.BaseModelFormSet | None = None) -> Stage:
    """Save a validated stage form (fields and relations) and, when given, its validated formset
    of risk tier rules, and record what changed in one entry."""
    with transaction.atomic():
        existing = form.instance.pk is not None
        # The form has already written its values onto form.instance: read the row as it was.
        before = stage_snapshot(Stage.objects.get(pk=form.instance.pk)) if existing else {}
        stage = form.save()
        if tier_rules is not None:
            tier_rules.instance = stage
            tier_rules.save()
        after = stage_snapshot(stage)
        changes = {k: {"before": before.get(k), "after": v} for k, v in after.items() if before.get(k) != v}
        if existing and not changes:
            return stage
        lowered = policy_lowered(before, after) if existing else []
        audit.record(
            action="stage.changed" if existing else "stage.created",
            actor=actor,
            meaning=f"Stage {stage.name} {'changed' if existing else 'created'}: "
            + ", ".join(sorted(_FIELD_WORDS.get(name, name) for name in changes)),
            to_stage=stage.name,
            details={"changes": changes, **({"lowered": lowered} if lowered else {})},
        )
        if lowered:
            notifications.policy_lowered_notify(
                stage_name=stage.name, lowered=lowered, actor_id=getattr(actor, "pk", None)
            )
    return stage


def policy_lowered(before: dict, after: dict) -> list[str]:
    """What a stage change lets through that it did not before, in words (empty: nothing)."""
    lowered = []
    if after["required_approvals"] < before["required_approvals"]:
        lowered.append(f"approvals needed {before['required_approvals']} → {after['required_approvals']}")
    dropped = sorted(set(before["checks"].splitlines()) - set(after["checks"].splitlines()))
    lowered += [f"check removed: {rule}" for rule in dropped if rule.strip()]
    opened = sorted(set(after["approver_groups"]) - set(before["approver_groups"]))
    lowered += [f"approver group added: {name}" for name in opened]
    if before["allowed_from"] and set(after["allowed_from"]) != set(before["allowed_from"]):
        if not after["allowed_from"] or set(after["allowed_from"]) - set(before["allowed_from"]):
            lowered.append(
                f"reachable from {', '.join(after['allowed_from']) or 'any stage'} "
                f"(was {', '.join(before['allowed_from'])})"
            )
    if after["allow_from_none"] and not before["allow_from_none"]:
        lowered.append("reachable from no stage")
    if (before.get("deployment_windows") or "").strip() and not after["deployment_windows"].strip():
        lowered.append("deployment windows removed: applied at any time")
    if before.get("signature_required") and not after["signature_required"]:
        lowered.append("decisions no longer signed")
    if after.get("emergency_allowed") and before.get("emergency_allowed") is False:
        lowered.append("emergency changes allowed (applied at once, reviewed afterwards)")
    if before.get("independent_validation") and not after["independent_validation"]:
        lowered.append("the version's author may approve")
    lowered += _tiers_lowered(before.get("risk_tiers") or {}, after.get("risk_tiers") or {})
    return lowered


def _tiers_lowered(before: dict, after: dict) -> list[str]:
    """What the risk tier rules no longer ask of a tier, in words."""
    lowered = []
    for tier, old in sorted(before.items()):
        new = after.get(tier)
        if new is None:
            lowered.append(f"risk tier {tier}: rule removed")
            continue
        if new["approvals"] < old["approvals"]:
            lowered.append(f"risk tier {tier}: approvals needed {old['approvals']} → {new['approvals']}")
        if old["group"] and new["group"] != old["group"]:
            lowered.append(
                f"risk tier {tier}: an approval from {old['group']} no longer required"
                + (f" ({new['group']} instead)" if new["group"] else "")
            )
        if old["signature"] and not new["signature"]:
            lowered.append(f"risk tier {tier}: decisions no longer signed")
    return lowered


def stage_delete(*, stage: Stage, actor) -> None:
    with transaction.atomic():
        audit.record(
            action="stage.deleted", actor=actor, meaning=f"Stage {stage.name} deleted", to_stage=stage.name
        )
        stage.delete()


def webhook_endpoint_save(*, form: forms.ModelForm, actor) -> WebhookEndpoint:
    """Save a validated endpoint form and record which fields changed.

    The record names the receiver's host, never the full URL (its path and query may carry a
    token) nor the secret, which is only said to have changed.
    """
    with transaction.atomic():
        existing = form.instance.pk is not None
        old_secret = (
            WebhookEndpoint.objects.filter(pk=form.instance.pk).values_list("secret", flat=True).first()
            if existing
            else None
        )
        endpoint = form.save()
        changed = [name for name in form.changed_data if name != "secret"]
        if endpoint.secret != old_secret:
            changed.append("secret (not shown)")
        audit.record(
            action="webhook.changed" if existing else "webhook.created",
            actor=actor,
            meaning=f"Webhook {endpoint.name} {'changed' if existing else 'created'}: " + ", ".join(changed),
            details={
                "host": _host(endpoint.url),
                "events": endpoint.events,
                "is_active": endpoint.is_active,
                "changed": changed,
            },
        )
    return endpoint


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor) -> None:
    with transaction.atomic():
        audit.record(
            action="webhook.deleted",
            actor=actor,
            meaning=f"Webhook {endpoint.name} deleted",
            details={"host": _host(endpoint.url)},
        )
        endpoint.delete()
