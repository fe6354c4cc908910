"""Django admin for stage admins: the catalog, validated, every change audited."""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin

from promotions import audit, policy
from promotions.models import AuditEvent, PromotionRequest, Stage

# MLflow's own rule for alias names, plus its reserved words.
_ALIAS = re.compile(r"^[\w\-]+$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
AUDITED_FIELDS = (
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
)


class StageForm(forms.ModelForm):
    class Meta:
        model = Stage
        fields = [*AUDITED_FIELDS[:8], "allowed_from", "approver_groups", *AUDITED_FIELDS[8:]]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        clash = Stage.objects.filter(name__iexact=name).exclude(pk=self.instance.pk).first()
        if clash:
            raise forms.ValidationError(f"A stage named '{clash.name}' exists already (names ignore case).")
        return name

    def clean_mlflow_alias(self) -> str:
        alias = self.cleaned_data["mlflow_alias"].strip()
        if alias and not _ALIAS.match(alias):
            raise forms.ValidationError("An MLflow alias uses letters, digits, '_' and '-' only.")
        if alias and _RESERVED_ALIAS.match(alias):
            raise forms.ValidationError(f"'{alias}' is reserved by MLflow ('latest' and 'v<number>').")
        return alias

    def clean_checks(self) -> str:
        lines = [line.strip() for line in self.cleaned_data["checks"].splitlines() if line.strip()]
        errors = []
        for line in lines:
            try:
                policy.parse_rule(line)
            except policy.RuleError as exc:
                errors.append(str(exc))
        if errors:
            raise forms.ValidationError(errors)
        return "\n".join(lines)

    def clean(self):
        data = super().clean()
        if not data.get("mlflow_stage") and not data.get("mlflow_alias"):
            raise forms.ValidationError("Bind the stage to an MLflow stage, an MLflow alias, or both.")
        if data.get("archive_existing") and data.get("mlflow_stage") in ("", None):
            self.add_error("archive_existing", "Archiving applies only to a legacy MLflow stage.")
        groups = data.get("approver_groups")
        if data.get("required_approvals", 0) > 0 and not groups:
            self.add_error(
                "approver_groups", "Choose who approves: a stage that needs approvals needs approver groups."
            )
        allowed = data.get("allowed_from")
        if allowed and self.instance.pk and any(s.pk == self.instance.pk for s in allowed):
            self.add_error("allowed_from", "A stage cannot be reached from itself.")
        ttl = data.get("request_ttl")
        if ttl is not None and ttl.total_seconds() <= 0:
            self.add_error("request_ttl", "The TTL must be positive.")
        return data


@admin.register(Stage)
class StageAdmin(admin.ModelAdmin):
    form = StageForm
    list_display = ("name", "position", "mlflow_stage", "mlflow_alias", "required_approvals", "is_active")
    list_editable = ()
    ordering = ("position",)
    filter_horizontal = ("allowed_from", "approver_groups")

    def save_model(self, request, obj, form, change):
        self._before = _snapshot(Stage.objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        stage = form.instance
        after = _snapshot(stage)
        before = self._before or {}
        changes = {k: {"before": before.get(k), "after": v} for k, v in after.items() if before.get(k) != v}
        if change and not changes:
            return
        audit.record(
            action="stage.changed" if change else "stage.created",
            actor=request.user,
            meaning=f"Stage {stage.name} {'changed' if change else 'created'}: " + ", ".join(sorted(changes)),
            to_stage=stage.name,
            details={"changes": changes},
        )

    def delete_model(self, request, obj):
        audit.record(
            action="stage.deleted", actor=request.user, meaning=f"Stage {obj.name} deleted", to_stage=obj.name
        )
        super().delete_model(request, obj)


def _snapshot(stage: Stage) -> dict:
    data = {name: getattr(stage, name) for name in AUDITED_FIELDS}
    data["request_ttl"] = str(data["request_ttl"])
    data["allowed_from"] = sorted(s.name for s in stage.allowed_from.all())
    data["approver_groups"] = sorted(g.name for g in stage.approver_groups.all())
    return data


class ReadOnly:
    """Admin mixin (first in the bases): rows shown, never added, changed or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PromotionRequest)
class PromotionRequestAdmin(ReadOnly, admin.ModelAdmin):
    """Read-only: requests change only through the workflow."""

    list_display = ("pk", "version", "stage", "status", "requested_by_name", "created_at")
    list_filter = ("status", "stage")
    list_select_related = ("version__model", "stage")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ("sequence", "created_at", "actor_name", "action", "meaning")
    list_filter = ("action",)


from promotions import admin_webhooks  # noqa: E402, F401 - registers the webhook pages
