"""Middleware of the product's own."""

from __future__ import annotations

from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequiredMiddleware


class LoginRequiredMiddleware(DjangoLoginRequiredMiddleware):
    """Django's, asking the view before the user: Django's loads the session and the user for
    every request, also for a view marked `login_not_required` (the sign-in page, the health
    check, the live poll's cheap path, which answers "unchanged" from one read of its row)."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not getattr(view_func, "login_required", True):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
