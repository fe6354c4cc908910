from django.urls import path

from promotions.identity import views

urlpatterns = [
    path("authenticate/", views.SsoStartView.as_view(), name="oidc_authentication_init"),
    path("callback/", views.SsoCallbackView.as_view(), name="oidc_authentication_callback"),
    path("reauthenticate/<int:pk>/", views.ReauthenticationStartView.as_view(), name="sso_reauthenticate"),
    path("no-role/", views.no_role, name="sso_no_role"),
]
