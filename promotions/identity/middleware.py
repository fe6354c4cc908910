"""The periodic refresh: while an SSO user is signed in, every OIDC_REFRESH_SECONDS their
refresh token is exchanged at the provider and their roles follow its groups again. A refresh
the provider refuses (it no longer knows the person, or revoked the grant) signs them out and
deactivates the account; a provider that is down leaves the session alone until it answers."""

from __future__ import annotations

import logging
import time

import requests
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.views import redirect_to_login

from promotions.identity import provider
from promotions.identity.backend import SESSION_REFRESH_TOKEN, SsoBackend
from promotions.models import SsoIdentity
from promotions.services import identity
from promotions.services.identity import SignInRefused

log = logging.getLogger(__name__)

SESSION_REFRESH_DUE = "sso_refresh_due"
# While the provider is down, try again after this long rather than on every request.
RETRY_SECONDS = 60


def _error_code(response) -> str:
    try:
        return str(response.json().get("error", ""))[:100]
    except (AttributeError, ValueError):
        return ""


def _refresh(request) -> bool:
    """False when the provider refused: the caller signs the user out."""
    backend = SsoBackend()
    backend.request = request
    try:
        answer = backend.get_token(
            {
                "client_id": settings.OIDC_RP_CLIENT_ID,
                "client_secret": settings.OIDC_RP_CLIENT_SECRET,
                "grant_type": "refresh_token",
                "refresh_token": request.session[SESSION_REFRESH_TOKEN],
            }
        )
        subject = SsoIdentity.objects.filter(user=request.user).values_list("subject", flat=True).first()
        if subject is None:  # the identity was removed by an administrator: sign in again
            return False
        # Many providers send no new ID token on a refresh: then the user info names the person.
        payload = backend.verify_token(answer["id_token"]) if answer.get("id_token") else {"sub": subject}
        if str(payload.get("sub")) != subject:
            raise SignInRefused("userinfo_subject")
        claims = backend.get_userinfo(answer.get("access_token"), answer.get("id_token"), payload)
    except requests.HTTPError as exc:
        if _error_code(exc.response) == "invalid_grant":
            identity.sso_user_provider_gone(user=request.user, reason="refresh refused (invalid_grant)")
            return False
        # Anything else (our client refused, the provider failing) says nothing about the person.
        log.warning("The provider refused an SSO refresh: %s", _error_code(exc.response) or "no error code")
        request.session[SESSION_REFRESH_DUE] = time.time() + RETRY_SECONDS
        return True
    except (requests.RequestException, provider.ProviderUnavailable) as exc:
        log.warning("Could not refresh an SSO session: %s", type(exc).__name__)
        request.session[SESSION_REFRESH_DUE] = time.time() + RETRY_SECONDS
        return True
    except SignInRefused as refusal:
        identity.sso_sign_in_refused_record(reason=refusal.reason, detail=refusal.detail)
        auth.logout(request)
        return False
    if new_token := answer.get("refresh_token"):
        request.session[SESSION_REFRESH_TOKEN] = new_token
    identity.sso_user_refresh(user=request.user, claims=claims)
    request.session[SESSION_REFRESH_DUE] = time.time() + settings.OIDC_REFRESH_SECONDS
    return True


def sso_refresh_middleware(get_response):
    def middleware(request):
        session = getattr(request, "session", None)
        if (
            settings.OIDC_ENABLED
            and session is not None
            and SESSION_REFRESH_TOKEN in session
            and request.user.is_authenticated
            and time.time() >= session.get(SESSION_REFRESH_DUE, 0)
            and not _refresh(request)
        ):
            auth.logout(request)
            return redirect_to_login(request.get_full_path())
        return get_response(request)

    return middleware
