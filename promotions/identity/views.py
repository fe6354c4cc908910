"""Sign-in pages: the password form (LOCAL_LOGIN), the break-glass form for superusers, and the
OpenID Connect start and callback (mozilla-django-oidc's views, with pages that say what went
wrong instead of a bare redirect)."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from mozilla_django_oidc.utils import absolutify
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from promotions import roles
from promotions.auth_events import client_address
from promotions.identity import provider, reauth
from promotions.identity.backend import SsoBackend
from promotions.identity.middleware import SESSION_REFRESH_DUE
from promotions.models import PromotionRequest, SsoIdentity
from promotions.services import identity, signatures
from promotions.services.identity import SignInRefused

LOCAL_LOGIN_OFF = "Sign-in with a password is turned off here: use the company sign-in."


def _login_page(request: HttpRequest, *, form=None, status: int = 200, **context) -> HttpResponse:
    context = {
        "form": form if form is not None else AuthenticationForm(request),
        "local_login": settings.LOCAL_LOGIN,
        "oidc_enabled": settings.OIDC_ENABLED,
        "provider_name": settings.OIDC_PROVIDER_NAME,
        "next": request.GET.get("next", ""),
        **context,
    }
    return render(request, "registration/login.html", context, status=status)


@method_decorator(login_not_required, name="dispatch")
class SignInView(LoginView):
    """Django's LoginView; with LOCAL_LOGIN=false it shows only the company sign-in."""

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "local_login": settings.LOCAL_LOGIN,
            "oidc_enabled": settings.OIDC_ENABLED,
            "provider_name": settings.OIDC_PROVIDER_NAME,
        }

    def post(self, request, *args, **kwargs):
        if not settings.LOCAL_LOGIN:
            return HttpResponse(LOCAL_LOGIN_OFF, status=403, content_type="text/plain; charset=utf-8")
        return super().post(request, *args, **kwargs)


class SuperuserAuthenticationForm(AuthenticationForm):
    def confirm_login_allowed(self, user) -> None:
        super().confirm_login_allowed(user)
        if not user.is_superuser:
            raise forms.ValidationError(
                "Only superusers created with `manage.py createsuperuser` sign in here.", code="not_superuser"
            )


@method_decorator(login_not_required, name="dispatch")
class BreakGlassSignInView(LoginView):
    """With LOCAL_LOGIN=false: a password sign-in for superusers only (django-axes still counts)."""

    authentication_form = SuperuserAuthenticationForm
    template_name = "identity/break_glass.html"

    def dispatch(self, request, *args, **kwargs):
        if settings.LOCAL_LOGIN:
            raise Http404("The password form is at /accounts/login/.")
        return super().dispatch(request, *args, **kwargs)


@method_decorator(login_not_required, name="dispatch")
class SsoStartView(OIDCAuthenticationRequestView):
    def __init__(self, *args, **kwargs) -> None:
        # Not the library's: it reads the authorization endpoint at once; here, on use.
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    def get(self, request):
        if not settings.OIDC_ENABLED:
            raise Http404("Company sign-in is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider.endpoint("authorization_endpoint")
        except provider.ProviderUnavailable:
            return _login_page(request, provider_down=True, status=503)
        return super().get(request)


class ReauthenticationStartView(SsoStartView):
    """To the provider for a fresh sign-in that signs the decision kept in the session."""

    def get(self, request, pk: int):
        if not settings.OIDC_ENABLED or not request.user.is_authenticated:
            raise Http404("Company sign-in is not configured.")
        if reauth.pending_for(request, pk) is None:
            return redirect("request_detail", pk=pk)
        response = super().get(request)
        if response.status_code == 302:
            state = parse_qs(urlsplit(response["Location"]).query).get("state", [""])[0]
            request.session["oidc_states"][state]["reauth"] = pk
            request.session.modified = True
        return response

    def get_extra_params(self, request):
        # A new authentication now, whatever session the provider holds (checked via auth_time).
        return {"prompt": "login", "max_age": "0"}


@method_decorator(login_not_required, name="dispatch")
class SsoCallbackView(OIDCAuthenticationCallbackView):
    def get(self, request):
        if not settings.OIDC_ENABLED:
            raise Http404("Company sign-in is not configured.")
        entry = request.session.get("oidc_states", {}).get(request.GET.get("state"))
        if isinstance(entry, dict) and entry.get("reauth") and request.GET.get("error"):
            # Cancelled at the provider while signing: nothing signed, still signed in here.
            del request.session["oidc_states"][request.GET["state"]]
            request.session.modified = True
            return redirect("request_detail", pk=entry["reauth"])
        if error := request.GET.get("error"):
            refusal = SignInRefused("provider_error", str(error)[:100])
            identity.sso_sign_in_refused_record(
                reason=refusal.reason, detail=refusal.detail, ip_address=client_address(request)
            )
            super().get(request)  # forgets the state and signs out, as the library does
            return self._refused(refusal)
        state = request.GET.get("state")
        if "code" not in request.GET or state not in request.session.get("oidc_states", {}):
            refusal = SignInRefused("state", str(state or "")[:64])
            identity.sso_sign_in_refused_record(
                reason=refusal.reason, detail=refusal.detail, ip_address=client_address(request)
            )
            return self._refused(refusal)
        entry = request.session["oidc_states"][state]
        if entry.get("reauth"):
            del request.session["oidc_states"][state]
            request.session.modified = True
            return self._reauthenticated(request, entry)
        return super().get(request)

    def _reauthenticated(self, request, entry: dict) -> HttpResponse:
        """A fresh sign-in for a signature: check it names the signer, now; then ask to confirm."""
        pending = reauth.pending_for(request, entry["reauth"]) if request.user.is_authenticated else None
        if pending is None:
            return self._refused(SignInRefused("state", "no signature waits for this sign-in"))
        promotion = get_object_or_404(
            PromotionRequest.objects.select_related("stage", "version__model"), pk=pending["request"]
        )
        backend = SsoBackend()
        backend.request = request
        try:
            answer = backend.get_token(
                {
                    "client_id": settings.OIDC_RP_CLIENT_ID,
                    "client_secret": settings.OIDC_RP_CLIENT_SECRET,
                    "grant_type": "authorization_code",
                    "code": request.GET["code"],
                    "redirect_uri": absolutify(request, reverse("oidc_authentication_callback")),
                    "code_verifier": entry.get("code_verifier"),
                }
            )
            payload = backend.verify_token(answer.get("id_token"), nonce=entry.get("nonce"))
        except SignInRefused as refusal:
            reason = refusal.text
        except (requests.RequestException, provider.ProviderUnavailable):
            reason = "the provider is not answering"
        else:
            reason = self._reauthentication_refusal(request, payload, pending)
        if reason:
            signatures.signature_refusal_record(user=request.user, promotion=promotion, reason=reason)
            return render(
                request,
                "identity/sign_confirm.html",
                {"promotion": promotion, "refusal": reason, "provider_name": settings.OIDC_PROVIDER_NAME},
                status=403,
            )
        reauth.proof_record(request, pending=pending, auth_time=int(payload["auth_time"]))
        return render(
            request,
            "identity/sign_confirm.html",
            {
                "promotion": promotion,
                "pending": pending,
                "fields": pending["fields"],
                "provider_name": settings.OIDC_PROVIDER_NAME,
            },
        )

    @staticmethod
    def _reauthentication_refusal(request, payload: dict, pending: dict) -> str:
        subject = SsoIdentity.objects.filter(user=request.user).values_list("subject", flat=True).first()
        if str(payload.get("sub")) != subject:
            return "the provider signed in another person"
        auth_time = payload.get("auth_time")
        if not isinstance(auth_time, int):
            return "the provider did not say when the person signed in (auth_time)"
        if auth_time < pending["posted_at"] - settings.OIDC_CLOCK_SKEW_SECONDS:
            return "the provider did not ask for a new sign-in (auth_time before the decision)"
        return ""

    def login_failure(self):
        refusal = getattr(self.request, "sso_refusal", None)
        if refusal is None:
            refusal = SignInRefused("inactive")
        return self._refused(refusal)

    def _refused(self, refusal: SignInRefused) -> HttpResponse:
        if refusal.reason == "provider_unavailable":
            return _login_page(self.request, provider_down=True, status=503)
        return render(
            self.request,
            "identity/refused.html",
            {
                "refusal": refusal,
                "provider_name": settings.OIDC_PROVIDER_NAME,
                "local_login": settings.LOCAL_LOGIN,
            },
            status=403 if refusal.reason in ("inactive", "username_taken") else 400,
        )

    def login_success(self):
        response = super().login_success()
        self.request.session[SESSION_REFRESH_DUE] = time.time() + settings.OIDC_REFRESH_SECONDS
        if not roles.role_names(self.user) and not self.user.is_superuser:
            return redirect("sso_no_role")
        return response


@login_not_required
def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's sign-in is ours: the password form, or with LOCAL_LOGIN=false the break-glass one."""
    target = reverse("login" if settings.LOCAL_LOGIN else "login_break_glass")
    next_url = request.GET.get("next", "")
    return redirect(f"{target}?{urlencode({'next': next_url})}" if next_url else target)


def no_role(request: HttpRequest) -> HttpResponse:
    """Signed in, but none of the provider's groups gives a role here."""
    sso = SsoIdentity.objects.filter(user=request.user).first()
    return render(
        request,
        "identity/no_role.html",
        {
            "groups": sso.last_groups if sso else [],
            "has_role": bool(roles.role_names(request.user)) or request.user.is_superuser,
            "groups_claim": settings.OIDC_GROUPS_CLAIM,
        },
    )
