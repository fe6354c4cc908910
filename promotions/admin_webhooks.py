"""Django admin for outbound webhooks: stage admins configure endpoints and re-send deliveries.

Only members of the Stage admins role (and superusers) see these pages; endpoint changes are
audited like catalog changes, without the secret.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from promotions import audit, notifications, policy
from promotions.admin import ReadOnly
from promotions.models import WEBHOOK_EVENTS, OutboundDelivery, WebhookEndpoint


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
        widgets = {"secret": forms.PasswordInput(render_value=True)}

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if not url.lower().startswith(("http://", "https://")):
            raise forms.ValidationError("Webhooks are sent over http or https only.")
        return url

    def clean_secret(self) -> str:
        secret = self.cleaned_data["secret"]
        if len(secret) < 16:
            raise forms.ValidationError("Use a secret of at least 16 characters.")
        return secret


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(_StageAdminsOnly, admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("name", "url", "event_list", "is_active", "created_at")
    list_filter = ("is_active",)

    @admin.display(description="events")
    def event_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events or []) or "—"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        changed = [name for name in form.changed_data if name != "secret"]
        if "secret" in form.changed_data:
            changed.append("secret (not shown)")
        audit.record(
            action="webhook.changed" if change else "webhook.created",
            actor=request.user,
            meaning=f"Webhook {obj.name} {'changed' if change else 'created'}: " + ", ".join(changed),
            details={"url": obj.url, "events": obj.events, "is_active": obj.is_active, "changed": changed},
        )

    def delete_model(self, request, obj):
        audit.record(
            action="webhook.deleted",
            actor=request.user,
            meaning=f"Webhook {obj.name} deleted",
            details={"url": obj.url},
        )
        super().delete_model(request, obj)


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
