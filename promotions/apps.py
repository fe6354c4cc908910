from django.apps import AppConfig

from registry_sync.signals import binding_changed, versions_changed


class PromotionsConfig(AppConfig):
    name = "promotions"
    verbose_name = "Promotions"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which are not loaded
        # yet when Django imports this AppConfig.
        from axes.signals import user_locked_out
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_login_failed
        from django.db.models.signals import m2m_changed, post_save, pre_save

        from promotions import auth_events, receivers, task_context

        user_login_failed.connect(auth_events.on_login_failed, dispatch_uid="audit-login-failed")
        user_locked_out.connect(auth_events.on_locked_out, dispatch_uid="audit-locked-out")
        user = get_user_model()
        m2m_changed.connect(
            auth_events.on_groups_changed, sender=user.groups.through, dispatch_uid="audit-groups"
        )
        pre_save.connect(auth_events.remember_activation, sender=user, dispatch_uid="audit-activation-before")
        post_save.connect(auth_events.on_user_saved, sender=user, dispatch_uid="audit-activation")
        versions_changed.connect(receivers.refresh_evidence, dispatch_uid="promotions-refresh-evidence")
        binding_changed.connect(receivers.record_drift_unless_ours, dispatch_uid="promotions-record-drift")
        task_context.connect()
