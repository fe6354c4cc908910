from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config import health
from promotions import api, error_pages

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", health.healthz, name="healthz"),
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
