"""The product's URLs plus a minimal Django view: the same middleware, a constant body."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.urls import include, path


def minimal(request):
    return HttpResponse(b"ok", content_type="text/plain")


@login_required
def minimal_signed_in(request):
    """The same, after the sign-in every product page pays for (session and user read)."""
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [
    path("bench/minimal/", minimal),
    path("bench/minimal-signed-in/", minimal_signed_in),
    path("", include("config.urls")),
]

handler400, handler403, handler404, handler500 = (
    "promotions.error_pages.handler400",
    "promotions.error_pages.handler403",
    "promotions.error_pages.handler404",
    "promotions.error_pages.handler500",
)
