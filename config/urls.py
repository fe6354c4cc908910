from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config import health
from promotions import api, error_pages
from promotions.identity import views as identity_views
from promotions.observability import views as observability_views

urlpatterns = [
    path("accounts/login/", identity_views.SignInView.as_view(), name="login"),
    path(
        "accounts/login/break-glass/", identity_views.BreakGlassSignInView.as_view(), name="login_break_glass"
    ),
    path("oidc/", include("promotions.identity.urls")),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", observability_views.metrics, name="metrics"),
    # One sign-in page for the admin too: the admin's own would take any staff password even
    # with LOCAL_LOGIN=false.
    path("admin/login/", identity_views.admin_login, name="admin_login_redirect"),
    path("admin/", admin.site.urls),
    path("audit/", include("promotions.audit.urls")),
    path("api/", api.urls()),
    path("settings/", include("promotions.token_urls")),
    path("", include("registry_sync.urls")),
    path("", include("promotions.urls")),
]

# JSON for unknown URLs under /api/, the usual page elsewhere.
handler404 = api.page_not_found
handler400 = error_pages.bad_request
handler403 = error_pages.permission_denied
handler500 = error_pages.server_error
