from django.apps import AppConfig

from registry_sync.signals import binding_changed, versions_changed


class PromotionsConfig(AppConfig):
    name = "promotions"
    verbose_name = "Promotions"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which are not loaded
        # yet when Django imports this AppConfig.
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_login_failed

        from promotions import auth_events, receivers

        user_login_failed.connect(auth_events.on_login_failed, dispatch_uid="audit-login-failed")
        user_locked_out.connect(auth_events.on_locked_out, dispatch_uid="audit-locked-out")
        versions_changed.connect(receivers.refresh_evidence, dispatch_uid="promotions-refresh-evidence")
        binding_changed.connect(receivers.record_drift_unless_ours, dispatch_uid="promotions-record-drift")
