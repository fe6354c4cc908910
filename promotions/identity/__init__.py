"""Company sign-in with OpenID Connect, on mozilla-django-oidc (docs/sso.md).

provider.py reads the provider's discovery document; backend.py checks ID tokens and hands the
claims to promotions/services/identity.py, which creates or updates the user, records the SSO
identity and sets the roles from the provider's groups; views.py and middleware.py are the web
side (sign-in pages, the periodic refresh).
"""
