"""The authentication backend for the OpenID Connect callback.

mozilla-django-oidc does the code exchange (with PKCE and the nonce); this subclass checks the
ID token fully (signature, audience, issuer, expiry, nonce: the library leaves audience and
issuer unchecked) and hands the claims to the identity service.
"""

from __future__ import annotations

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from promotions.auth_events import client_address
from promotions.identity import provider
from promotions.services import identity
from promotions.services.identity import SignInRefused

NO_NONCE = object()

_TOKEN_ERRORS = (
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidTokenError, "invalid_token"),
)


class SsoBackend(OIDCAuthenticationBackend):
    def __init__(self, *args, **kwargs) -> None:
        # Not the library's: it reads the provider's endpoints at once, and Django builds every
        # backend for every password sign-in too; these come from discovery when needed.
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.token_info: dict = {}

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:  # noqa: N802 - the library's attribute names
        return provider.endpoint("token_endpoint")

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:  # noqa: N802
        return provider.endpoint("userinfo_endpoint")

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:  # noqa: N802
        return provider.endpoint("jwks_uri")

    def authenticate(self, request, **kwargs):
        # Only the callback passes a nonce; a password sign-in passes a username and password.
        if not settings.OIDC_ENABLED or request is None or "nonce" not in kwargs:
            return None
        try:
            return super().authenticate(request, **kwargs)
        except SignInRefused as refusal:
            request.sso_refusal = refusal
        except provider.ProviderUnavailable as exc:
            request.sso_refusal = SignInRefused("provider_unavailable", str(exc))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            request.sso_refusal = SignInRefused("token_request", f"status {status}")
        except requests.RequestException as exc:
            request.sso_refusal = SignInRefused("provider_unavailable", type(exc).__name__)
        if request.sso_refusal.reason != "provider_unavailable":
            identity.sso_sign_in_refused_record(
                reason=request.sso_refusal.reason,
                detail=request.sso_refusal.detail,
                ip_address=client_address(request),
            )
        return None

    def get_user(self, user_id):
        # The library's returns deactivated users too: a session would outlive the deactivation.
        user = super().get_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None

    def get_token(self, payload):
        self.token_info = super().get_token(payload)
        return self.token_info

    def store_tokens(self, access_token, id_token):
        # The refresh token lets the roles follow the provider while signed in (middleware.py).
        if refresh_token := self.token_info.get("refresh_token"):
            self.request.session[SESSION_REFRESH_TOKEN] = refresh_token

    def retrieve_matching_jwk(self, token):
        """The provider's key for `token`: the one its `kid` names, or, when the token names
        none, the provider's only key for its algorithm (the library insists on a `kid`)."""
        header = jwt.get_unverified_header(token)
        response = requests.get(self.OIDC_OP_JWKS_ENDPOINT, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        keys = [
            key
            for key in response.json().get("keys", [])
            if key.get("alg", header.get("alg")) == header.get("alg")
        ]
        if "kid" in header:
            keys = [key for key in keys if key.get("kid") == header["kid"]]
        elif len(keys) > 1:
            raise SignInRefused("signature", "the token names no key and the provider has several")
        if not keys:
            raise SignInRefused("signature", "no key of the provider matches the token")
        return jwt.PyJWK(keys[0])

    def verify_token(self, token, nonce=NO_NONCE, **kwargs):
        if not isinstance(token, str) or not token:
            raise SignInRefused("invalid_token", "no ID token")
        try:
            key = self.retrieve_matching_jwk(token)
            payload = jwt.decode(
                token,
                key,
                algorithms=[self.OIDC_RP_SIGN_ALGO],
                audience=self.OIDC_RP_CLIENT_ID,
                # The issuer exactly as the provider spells it (a trailing slash included).
                issuer=provider.discovery()["issuer"],
                leeway=settings.OIDC_CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            for error, reason in _TOKEN_ERRORS:
                if isinstance(exc, error):
                    raise SignInRefused(reason, str(exc)[:200]) from None
            raise SignInRefused("invalid_token", str(exc)[:200]) from None
        if nonce is not NO_NONCE and payload.get("nonce") != nonce:
            raise SignInRefused("nonce")
        return payload

    def get_userinfo(self, access_token, id_token, payload):
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            info = super().get_userinfo(access_token, id_token, payload)
            if not isinstance(info, dict) or str(info.get("sub")) != str(payload.get("sub")):
                raise SignInRefused("userinfo_subject")
            claims.update(info)
        return claims

    def get_or_create_user(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        return identity.sso_user_sign_in(
            issuer=settings.OIDC_ISSUER, claims=claims, ip_address=client_address(self.request)
        )


SESSION_REFRESH_TOKEN = "sso_refresh_token"
