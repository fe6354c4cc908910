"""The site's 400, 403, 404 and 500 pages: in the site's frame, a sentence saying why, and a way
back. An htmx request gets the sentence in the page's message area instead of a whole page
swapped into a fragment."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import loader
from django.urls import Resolver404, reverse
from django.utils.html import format_html
from django_htmx.http import reswap, retarget

REASONS = {
    400: ("That request was not understood", "The page sent something this site cannot read."),
    403: ("You may not do this", "Your roles do not allow this page or action."),
    404: ("Not found", "Nothing lives at this address: it may have been mistyped, or removed."),
}


def _reason(status: int, exception) -> str:
    # Our own refusals carry a sentence (PermissionDenied("Only auditors …"), Http404("No such
    # request.")); a URL no route matches carries the resolver's internals, never shown.
    text = ""
    if exception is not None and not isinstance(exception, Resolver404) and exception.args:
        first = exception.args[0]
        text = first if isinstance(first, str) else ""
    return text or REASONS[status][1]


def error_response(request: HttpRequest, status: int, reason: str = "") -> HttpResponse:
    reason = reason or REASONS[status][1]
    if getattr(request, "htmx", False):
        fragment = format_html('<p class="flash flash--error" role="alert">{}</p>', reason)
        return reswap(retarget(HttpResponse(fragment, status=status), "#messages"), "innerHTML")
    signed_in = getattr(request, "user", None) is not None and request.user.is_authenticated
    context = {
        "heading": REASONS[status][0],
        "reason": reason,
        "back_url": reverse("queue") if signed_in else reverse("login"),
        "back_label": "Back to the queue" if signed_in else "Sign in",
    }
    return render(request, "error.html", context, status=status)


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    return error_response(request, 400, _reason(400, exception))


def permission_denied(request: HttpRequest, exception=None) -> HttpResponse:
    return error_response(request, 403, _reason(403, exception))


def page_not_found(request: HttpRequest, exception=None) -> HttpResponse:
    return error_response(request, 404, _reason(404, exception))


def server_error(request: HttpRequest) -> HttpResponse:
    # No request context: the database or a context processor may be what failed.
    return HttpResponse(loader.get_template("500.html").render(), status=500)
