"""The product's URLs plus a minimal Django view: the same middleware, a constant body."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import include, path

from promotions import views


def minimal(request):
    return HttpResponse(b"ok", content_type="text/plain")


@login_required
def minimal_signed_in(request):
    """The same, after the sign-in every product page pays for (session and user read)."""
    return HttpResponse(b"ok", content_type="text/plain")


# The queue view's template and context, read once per process by queue_template_only.
_captured: dict = {}


@login_required
def queue_template_only(request):
    """The queue's own template drawn from rows read once: what the page costs without its SQL
    (the frame's context processors still run), the ceiling any uncached queue could reach."""
    if not _captured:

        def capture(request, template, context, status=200):
            _captured.update(template=template, context=context)
            return render(request, template, context, status=status)

        views.render, original = capture, views.render
        try:
            views.queue(request)
        finally:
            views.render = original
        context = _captured["context"]
        context["page"].object_list = list(context["page"].object_list)
        context["stages"] = list(context["stages"])
        context["blocked"] = list(context["blocked"])
    return render(request, _captured["template"], _captured["context"])


urlpatterns = [
    path("bench/minimal/", minimal),
    path("bench/queue-template-only/", queue_template_only),
    path("bench/minimal-signed-in/", minimal_signed_in),
    path("", include("config.urls")),
]

handler400, handler403, handler404, handler500 = (
    "promotions.error_pages.handler400",
    "promotions.error_pages.handler403",
    "promotions.error_pages.handler404",
    "promotions.error_pages.handler500",
)
