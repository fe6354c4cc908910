"""URLs of the personal settings pages (`/settings/…`)."""

from django.urls import path

from promotions import token_views

urlpatterns = [
    path("tokens/", token_views.token_list, name="token_list"),
]
