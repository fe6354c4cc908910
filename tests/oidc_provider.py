"""A real OpenID Connect provider for the sign-in tests: oidc-provider-mock, started as its own
process on a free loopback port. Tests give it users with claims (PUT /users/<sub>) and sign
them in by posting its authorization form, as a person would."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

from promotions import roles
from promotions.identity import provider as discovery

CLIENT_ID = "promotions-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen

    def set_user(self, sub: str, **claims) -> None:
        response = requests.put(f"{self.issuer}/users/{sub}", json=claims, timeout=5)
        response.raise_for_status()

    def revoke(self, sub: str) -> None:
        requests.post(f"{self.issuer}/users/{sub}/revoke-tokens", timeout=5).raise_for_status()

    def authorize(self, authorize_url: str, sub: str) -> str:
        """Post the provider's sign-in form for `sub`; the path and query it sends us back to."""
        response = requests.post(authorize_url, data={"sub": sub}, allow_redirects=False, timeout=5)
        assert response.status_code == 302, response.text[:500]
        back = urlsplit(response.headers["Location"])
        return f"{back.path}?{back.query}"

    def id_token(self, *, sub: str, client_id: str, nonce: str = "n-1", host: str = "127.0.0.1") -> str:
        """An ID token the provider really signs, for `client_id` (the test acts as the client)."""
        base = self.issuer.replace("127.0.0.1", host)
        redirect_uri = "http://testserver/oidc/callback/"
        response = requests.post(
            f"{base}/oauth2/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile",
                "state": "s",
                "nonce": nonce,
            },
            data={"sub": sub},
            allow_redirects=False,
            timeout=5,
        )
        code = dict(part.split("=", 1) for part in urlsplit(response.headers["Location"]).query.split("&"))[
            "code"
        ]
        token = requests.post(
            f"{base}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": client_id,
                "client_secret": "secret",
            },
            timeout=5,
        )
        token.raise_for_status()
        return token.json()["id_token"]


def start(*, token_max_age: int = 3600) -> Provider:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oidc_provider_mock",
            "--port",
            str(port),
            "--token-max-age",
            str(token_max_age),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    issuer = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"oidc-provider-mock exited with {process.returncode}")
        try:
            if requests.get(f"{issuer}/.well-known/openid-configuration", timeout=1).ok:
                return Provider(issuer=issuer, process=process)
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("oidc-provider-mock did not start")


def stop(provider: Provider) -> None:
    provider.process.terminate()
    try:
        provider.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        provider.process.kill()


@pytest.fixture(scope="session")
def oidc():
    """One provider process for the session."""
    provider = start()
    yield provider
    stop(provider)


@pytest.fixture
def sso(oidc, settings):
    """Company sign-in on, through the session's provider."""
    settings.OIDC_ISSUER = oidc.issuer
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_PROVIDER_NAME = "Acme SSO"
    settings.OIDC_ROLE_MAP = {"ml-reviewers": roles.REVIEWERS, "ml-platform": roles.STAGE_ADMINS}
    discovery.forget()
    yield oidc
    discovery.forget()
