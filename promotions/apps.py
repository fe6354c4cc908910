from django.apps import AppConfig


class PromotionsConfig(AppConfig):
    name = "promotions"
    verbose_name = "Promotions"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_login_failed

        from promotions import auth_events

        user_login_failed.connect(auth_events.on_login_failed, dispatch_uid="audit-login-failed")
        user_locked_out.connect(auth_events.on_locked_out, dispatch_uid="audit-locked-out")
