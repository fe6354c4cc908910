"""Django admin for stage admins: the stage catalog and the outbound webhooks, validated, every
change saved through the configuration services (which audit it).

Only members of the Stage admins role (and superusers) see the webhook and e-mail pages;
requests, the audit log and the e-mail outbox are shown read-only.
"""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin, messages

from promotions import change_windows, notifications, policy, webhook_targets
from promotions.models import (
    DEFAULT_SIGNATURE_MEANINGS,
    REJECTION_MEANING,
    WEBHOOK_EVENTS,
    AuditEvent,
    Freeze,
    OutboundDelivery,
    OutboundEmail,
    Profile,
    PromotionRequest,
    RiskTierRule,
    SsoIdentity,
    Stage,
    WebhookEndpoint,
)
from promotions.services import configuration, people, scheduling
from promotions.services.configuration import STAGE_FIELDS

# MLflow's own rule for alias names, plus its reserved words.
_ALIAS = re.compile(r"^[\w\-]+$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


class MeaningsField(forms.CharField):
    """A list of signature meanings, edited one a line."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value):
        if isinstance(value, list):
            return "\n".join(value)
        return value

    def to_python(self, value) -> list[str]:
        if isinstance(value, list):
            return value
        text = super().to_python(value)
        meanings = []
        for line in text.splitlines():
            if line.strip() and line.strip() not in meanings:
                meanings.append(line.strip())
        return meanings


class StageForm(forms.ModelForm):
    signature_meanings = MeaningsField(
        label="Signature meanings",
        required=False,
        help_text=Stage._meta.get_field("signature_meanings").help_text
        + " Leave empty for: "
        + ", ".join(DEFAULT_SIGNATURE_MEANINGS)
        + ".",
    )

    class Meta:
        model = Stage
        fields = [*STAGE_FIELDS[:8], "allowed_from", "approver_groups", *STAGE_FIELDS[8:]]

    def clean_signature_meanings(self) -> list[str]:
        meanings = self.cleaned_data["signature_meanings"] or list(DEFAULT_SIGNATURE_MEANINGS)
        too_long = [m for m in meanings if len(m) > 200]
        if too_long:
            raise forms.ValidationError("A meaning is at most 200 characters.")
        if REJECTION_MEANING in meanings:
            raise forms.ValidationError(f"'{REJECTION_MEANING}' is what every signed rejection means.")
        return meanings

    def clean_window_time_zone(self) -> str:
        name = self.cleaned_data["window_time_zone"].strip() or "UTC"
        try:
            change_windows.zone_get(name)
        except change_windows.WindowError as exc:
            raise forms.ValidationError(str(exc)) from None
        return name

    def clean_deployment_windows(self) -> str:
        try:
            windows = change_windows.parse_windows(self.cleaned_data["deployment_windows"])
        except change_windows.WindowError as exc:
            raise forms.ValidationError(str(exc)) from None
        # Stored as the catalog page shows them: 'Mon–Thu 09:00–16:00'.
        return "\n".join(window.label for window in windows)

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
        escalate_after = data.get("escalate_after")
        if escalate_after is not None and escalate_after.total_seconds() <= 0:
            self.add_error("escalate_after", "Escalation needs a positive wait; leave it empty for none.")
        return data


class RiskTierRuleForm(forms.ModelForm):
    class Meta:
        model = RiskTierRule
        fields = ["tier", "min_approvals", "required_group", "signature_required"]

    def clean_tier(self) -> str:
        # Compared as policy.normalize_tier compares a model's tag: trimmed, ignoring case.
        tier = policy.normalize_tier(self.cleaned_data["tier"])
        if not tier or any(ord(c) < 32 for c in tier):
            raise forms.ValidationError("Name the tier as the model's tag says it, e.g. high.")
        return tier

    def clean(self):
        data = super().clean()
        if not (data.get("min_approvals") or data.get("required_group") or data.get("signature_required")):
            if not data.get("DELETE"):
                raise forms.ValidationError(
                    "A tier rule asks for something: more approvals, a group's approval or a signature."
                )
        return data


class RiskTierRuleInline(admin.TabularInline):
    """The stage's risk tier rules, edited on the stage's own page (plain rows: works without
    JavaScript) and saved with it by configuration.stage_save, in its audited change."""

    model = RiskTierRule
    form = RiskTierRuleForm
    extra = 2
    verbose_name = "risk tier rule"
    verbose_name_plural = (
        "risk tier rules (the model's tag, settings RISK_TIER_TAG, raises what this stage needs; "
        "the required group's member must also be in the stage's approver groups)"
    )

    # Part of the stage: whoever may add or change the stage edits its tier rules.
    def _may_edit_stage(self, request) -> bool:
        return request.user.has_perm("promotions.change_stage") or request.user.has_perm(
            "promotions.add_stage"
        )

    def has_view_permission(self, request, obj=None):
        return self._may_edit_stage(request) or request.user.has_perm("promotions.view_stage")

    def has_add_permission(self, request, obj=None):
        return self._may_edit_stage(request)

    def has_change_permission(self, request, obj=None):
        return self._may_edit_stage(request)

    def has_delete_permission(self, request, obj=None):
        return self._may_edit_stage(request)


@admin.register(Stage)
class StageAdmin(admin.ModelAdmin):
    form = StageForm
    inlines = [RiskTierRuleInline]
    list_display = (
        "name",
        "position",
        "mlflow_stage",
        "mlflow_alias",
        "required_approvals",
        "enforcement",
        "signature_required",
        "is_active",
    )
    list_editable = ()
    ordering = ("position",)
    filter_horizontal = ("allowed_from", "approver_groups")

    def save_model(self, request, obj, form, change):
        # Saved in save_related, with the tier rules' formset: one audited change of the stage.
        pass

    def save_related(self, request, form, formsets, change):
        tier_rules = next((f for f in formsets if f.model is RiskTierRule), None)
        configuration.stage_save(form=form, actor=request.user, tier_rules=tier_rules)

    def delete_model(self, request, obj):
        configuration.stage_delete(stage=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        # The changelist's bulk delete: one audited delete a stage, not one silent query.
        for stage in queryset:
            configuration.stage_delete(stage=stage, actor=request.user)


class FreezeForm(forms.ModelForm):
    class Meta:
        model = Freeze
        fields = ["stage", "starts_at", "ends_at", "reason"]
        help_texts = {
            "starts_at": "UTC. Filing and approving go on during the freeze; applying waits.",
            "ends_at": "UTC. Requests it held are applied once it ends, inside the stage's windows.",
        }

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if "\x00" in reason:
            raise forms.ValidationError("The reason contains a NUL character.")
        return reason

    def clean(self):
        data = super().clean()
        starts, ends = data.get("starts_at"), data.get("ends_at")
        if starts and ends and ends <= starts:
            self.add_error("ends_at", "A freeze ends after it starts.")
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


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    """The MLflow user of a person, when MLflow knows them by another name than their username:
    stages with independent validators compare it with the version's authors."""

    list_display = ("user", "mlflow_user")
    search_fields = ("user__username", "mlflow_user")
    raw_id_fields = ("user",)
    fields = ("user", "mlflow_user")

    def save_model(self, request, obj, form, change):
        people.profile_save(form=form, actor=request.user)


@admin.register(SsoIdentity)
class SsoIdentityAdmin(ReadOnly, admin.ModelAdmin):
    """Read-only: written by the company sign-in (promotions/services/identity.py) alone."""

    list_display = ("user", "subject", "issuer", "last_sign_in_at", "deactivated_by_provider")
    list_select_related = ("user",)
    search_fields = ("user__username", "subject")


# --- outbound webhooks ------------------------------------------------------------------------


class _StageAdminsOnly:
    def has_module_permission(self, request):
        return policy.is_stage_admin(request.user)

    def has_view_permission(self, request, obj=None):
        return policy.is_stage_admin(request.user)

    def has_add_permission(self, request):
        return policy.is_stage_admin(request.user)

    def has_change_permission(self, request, obj=None):
        return policy.is_stage_admin(request.user)

    def has_delete_permission(self, request, obj=None):
        return policy.is_stage_admin(request.user)


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=[(event, event) for event in WEBHOOK_EVENTS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["name", "url", "secret", "events", "is_active"]
        widgets = {"secret": forms.PasswordInput(render_value=False)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["secret"].required = False
            self.fields["secret"].help_text = "Leave empty to keep the current secret."

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if refusal := webhook_targets.url_refusal(url):
            raise forms.ValidationError(refusal)
        return url

    def clean_secret(self) -> str:
        secret = self.cleaned_data["secret"]
        if not secret and self.instance.pk:
            # The secret is never sent back to the browser: an empty field keeps the current one.
            return self.instance.secret
        if len(secret) < 16:
            raise forms.ValidationError("Use a secret of at least 16 characters.")
        return secret


@admin.register(Freeze)
class FreezeAdmin(_StageAdminsOnly, admin.ModelAdmin):
    """Freezes are added and lifted (both audited), never edited: lift one and add another."""

    form = FreezeForm
    list_display = ("stage", "starts_at", "ends_at", "reason", "created_by_name")
    list_filter = ("stage",)
    list_select_related = ("stage",)

    def has_change_permission(self, request, obj=None):
        return obj is None and policy.is_stage_admin(request.user)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        freeze = scheduling.freeze_add(
            stage=data["stage"],
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            reason=data["reason"],
            actor=request.user,
        )
        obj.pk = freeze.pk
        obj.created_at = freeze.created_at

    def delete_model(self, request, obj):
        scheduling.freeze_remove(freeze=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for freeze in queryset.select_related("stage"):
            scheduling.freeze_remove(freeze=freeze, actor=request.user)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(_StageAdminsOnly, admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("name", "url", "event_list", "is_active", "created_at")
    list_filter = ("is_active",)

    @admin.display(description="events")
    def event_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events or []) or "—"

    def save_model(self, request, obj, form, change):
        configuration.webhook_endpoint_save(form=form, actor=request.user)

    def delete_model(self, request, obj):
        configuration.webhook_endpoint_delete(endpoint=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for endpoint in queryset:
            configuration.webhook_endpoint_delete(endpoint=endpoint, actor=request.user)


@admin.register(OutboundDelivery)
class OutboundDeliveryAdmin(ReadOnly, _StageAdminsOnly, admin.ModelAdmin):
    """A record of every delivery; read-only but for the re-send action."""

    list_display = (
        "created_at",
        "event",
        "endpoint",
        "request_id",
        "status",
        "response_code",
        "attempts",
        "last_error",
    )
    list_filter = ("status", "event", "endpoint")
    list_select_related = ("endpoint",)
    readonly_fields = (
        "endpoint",
        "event",
        "request_id",
        "payload",
        "delivery_id",
        "status",
        "response_code",
        "attempts",
        "last_error",
        "created_at",
        "last_attempt_at",
        "delivered_at",
    )
    actions = ["resend"]

    @admin.action(description="Re-send the selected deliveries", permissions=["view"])
    def resend(self, request, queryset):
        deliveries = list(queryset.select_related("endpoint"))
        for delivery in deliveries:
            notifications.delivery_resend(delivery=delivery)
        self.message_user(
            request, f"{len(deliveries)} delivery(ies) queued to be sent again.", level=messages.SUCCESS
        )


@admin.register(OutboundEmail)
class OutboundEmailAdmin(ReadOnly, _StageAdminsOnly, admin.ModelAdmin):
    """A record of every e-mail owed: which went out, which failed and why."""

    list_display = ("created_at", "kind", "payload", "status", "attempts", "last_error", "sent_at")
    list_filter = ("status", "kind")
    readonly_fields = (
        "kind",
        "payload",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "last_attempt_at",
        "sent_at",
    )
