"""Personal API tokens: every signed-in user creates, sees and revokes their own."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from promotions import tokens
from promotions.errors import PromotionError
from promotions.forms import parse_number
from promotions.models import ApiToken


def _get_token_for_user(request: HttpRequest, raw_id: str) -> ApiToken:
    # Another user's token is "not found": its existence is none of this user's business; an
    # id that is no number names no token either.
    try:
        token = ApiToken.objects.filter(pk=parse_number(raw_id, name="token id"), user=request.user).first()
    except ValidationError:
        token = None
    if token is None:
        raise Http404("No such token.")
    return token


@never_cache
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    context = {"new_token": None, "error": "", "name": ""}
    if request.method == "POST":
        if "revoke" in request.POST:
            token = _get_token_for_user(request, request.POST.get("revoke"))
            tokens.api_token_revoke(token=token, user=request.user)
            messages.success(request, f"Token '{token.name}' ({token.prefix}…) is revoked.")
            return redirect("token_list")
        name = request.POST.get("name", "").strip()
        try:
            token, raw = tokens.api_token_create(user=request.user, name=name)
        except PromotionError as exc:
            context.update(error=exc.message, name=name[:100])
        else:
            # Shown in this response only: the token is stored nowhere, not even in the session.
            context["new_token"] = {"row": token, "raw": raw}
    context["tokens"] = tokens.tokens_of(request.user)
    return render(request, "promotions/tokens.html", context, status=422 if context["error"] else 200)
