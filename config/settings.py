"""Settings for the promotion service, read from the environment.

Defaults run everything on one machine with no server to install: SQLite files under var/,
kombu's SQLite broker, and a local MLflow server on 127.0.0.1:5000.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from config.env import envbool, envchoice, envint, envlist, envnetworks, envstr, envurl

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = envbool("DEBUG", False)

SECRET_KEY = envstr("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-for-debug"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials.apps.SimpleAppConfig",
    "csp",
    "axes",
    "registry_sync",
    "promotions",
]

MIDDLEWARE = [
    # First: every log line of a request, the security redirects' included, carries its id.
    "promotions.middleware.request_id_middleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "promotions.audit.log.audit_context_middleware",
    "promotions.identity.middleware.sso_refresh_middleware",
    "promotions.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "promotions.context_processors.frame",
            ],
            "builtins": ["template_partials.templatetags.partials"],
            "loaders": [
                (
                    "template_partials.loader.Loader",
                    [
                        (
                            "django.template.loaders.cached.Loader",
                            [
                                "django.template.loaders.filesystem.Loader",
                                "django.template.loaders.app_directories.Loader",
                            ],
                        )
                    ],
                )
            ],
        },
    }
]


# Database ------------------------------------------------------------------------------------
def _database_from_env() -> dict:
    url = envstr("DATABASE_URL", "sqlite:///var/db.sqlite3")
    try:
        config = dj_database_url.parse(url, conn_max_age=envint("DB_CONN_MAX_AGE", 0))
    except (ValueError, KeyError, dj_database_url.UnknownSchemeError) as exc:
        raise ImproperlyConfigured(f"DATABASE_URL={url!r} is not a database URL: {exc}") from None
    engine = config.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        name = Path(config["NAME"] or "var/db.sqlite3")
        if not name.is_absolute():
            name = BASE_DIR / name
        config["NAME"] = str(name)
        config["TEST"] = {"NAME": envstr("TEST_DATABASE_NAME", str(name.with_name(f"test_{name.name}")))}
        # WAL lets the web process, the worker and beat read while one of them writes;
        # IMMEDIATE takes the write lock up front so concurrent writers queue instead of
        # failing with "database is locked" half-way through a transaction.
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    elif engine == "django.db.backends.postgresql":
        if not config.get("NAME"):
            raise ImproperlyConfigured(f"DATABASE_URL={url!r} names no database.")
    else:
        raise ImproperlyConfigured(
            f"DATABASE_URL={url!r}: only sqlite:// and postgres:// databases are supported."
        )
    return config


DATABASES = {"default": _database_from_env()}


def _database_owner_from_env() -> dict | None:
    """DATABASE_OWNER_URL: the role that owns the tables, used by `migrate` and
    `create_database_roles` only (promotions/database_roles.py). Not a database alias: nothing
    else may reach the database as the owner."""
    url = envstr("DATABASE_OWNER_URL", "")
    if not url:
        return None
    try:
        owner = dj_database_url.parse(url)
    except (ValueError, KeyError, dj_database_url.UnknownSchemeError) as exc:
        raise ImproperlyConfigured(f"DATABASE_OWNER_URL is not a database URL: {exc}") from None
    default = DATABASES["default"]
    if owner.get("ENGINE") != "django.db.backends.postgresql" or default["ENGINE"] != owner["ENGINE"]:
        raise ImproperlyConfigured("DATABASE_OWNER_URL needs PostgreSQL in both it and DATABASE_URL.")
    if owner.get("NAME") != default["NAME"]:
        raise ImproperlyConfigured("DATABASE_OWNER_URL must name the database DATABASE_URL names.")
    if not owner.get("USER") or owner["USER"] == default.get("USER"):
        raise ImproperlyConfigured("DATABASE_OWNER_URL must name another role than DATABASE_URL.")
    return owner


DATABASE_OWNER = _database_owner_from_env()
# The role the owner grants the application's privileges to, after every migrate.
DATABASE_APP_ROLE = (DATABASES["default"].get("USER") or "") if DATABASE_OWNER else ""
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Auth ----------------------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "queue"
LOGOUT_REDIRECT_URL = "login"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    # Does nothing but on the OpenID Connect callback (and only with OIDC_ISSUER set).
    "promotions.identity.backend.SsoBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = envint("AXES_COOLOFF_MINUTES", 15, minimum=1) / 60  # hours
# Lock a user name from one address: a typo-prone colleague elsewhere is not locked out.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Behind N reverse proxies (each appending to X-Forwarded-For), set TRUSTED_PROXY_COUNT=N: the
# client's address is then the entry the outermost proxy added, not the proxy's own address.
TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "promotions.auth_events.client_address"
# Company sign-in carries no user name: counted by address alone, a few refused callbacks would
# lock everyone behind an office's address out. The provider guards its own passwords.
AXES_WHITELIST_CALLABLE = "promotions.auth_events.is_company_sign_in"
# The audit log records failed sign-ins for this many user names per address and cool-off
# window; beyond it, one address's failures are counted under one entry.
SIGN_IN_AUDIT_NAMES_PER_ADDRESS = envint("SIGN_IN_AUDIT_NAMES_PER_ADDRESS", 20, minimum=1)
# A signed decision form (stages with signature_required) is good for this long, and once.
SIGNATURE_FORM_MAX_AGE_SECONDS = envint("SIGNATURE_FORM_MAX_AGE_SECONDS", 600, minimum=30)
# The registered model's tag that names its risk tier; the stage catalog's tier rules match its value.
RISK_TIER_TAG = envstr("RISK_TIER_TAG", "risk_tier")

# Company sign-in (OpenID Connect, promotions/identity) ----------------------------------------
# Off unless OIDC_ISSUER is set. The provider's endpoints come from its discovery document,
# fetched on first use (not at start-up: a provider that is down must not stop the site).
OIDC_ISSUER = (
    envurl("OIDC_ISSUER", "", schemes=("http", "https")).rstrip("/") if envstr("OIDC_ISSUER", "") else ""
)
OIDC_ENABLED = bool(OIDC_ISSUER)
OIDC_RP_CLIENT_ID = envstr("OIDC_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = envstr("OIDC_CLIENT_SECRET", "")
if OIDC_ENABLED and not OIDC_RP_CLIENT_ID:
    raise ImproperlyConfigured("OIDC_ISSUER is set: OIDC_CLIENT_ID is required too.")
OIDC_PROVIDER_NAME = envstr("OIDC_PROVIDER_NAME", "single sign-on")
OIDC_RP_SCOPES = envstr("OIDC_SCOPES", "openid email profile")
OIDC_RP_SIGN_ALGO = envstr("OIDC_SIGN_ALGO", "RS256")
OIDC_GROUPS_CLAIM = envstr("OIDC_GROUPS_CLAIM", "groups")
OIDC_TIMEOUT = envint("OIDC_TIMEOUT_SECONDS", 5, minimum=1)
# Roles are recomputed at every sign-in and, with a refresh token, this often while signed in.
OIDC_REFRESH_SECONDS = envint("OIDC_REFRESH_SECONDS", 900, minimum=30)
OIDC_CLOCK_SKEW_SECONDS = envint("OIDC_CLOCK_SKEW_SECONDS", 60, minimum=0)
OIDC_USE_PKCE = True
# client_secret_basic: the method every provider must accept at its token endpoint.
OIDC_TOKEN_USE_BASIC_AUTH = True
OIDC_USE_NONCE = True
OIDC_CREATE_USER = True
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"


def _role_map_from_env() -> dict[str, str]:
    roles = ("Requesters", "Reviewers", "Stage admins", "Auditors")  # promotions.roles.ALL_ROLES
    mapping = {}
    for item in envlist("OIDC_ROLE_MAP", []):
        group, sep, role = item.partition("=")
        if not sep or not group.strip() or role.strip() not in roles:
            raise ImproperlyConfigured(
                f"OIDC_ROLE_MAP entry {item!r} must be GROUP=ROLE, the role one of: {', '.join(roles)}."
            )
        mapping[group.strip()] = role.strip()
    return mapping


OIDC_ROLE_MAP = _role_map_from_env()
# Off: no password form; only superusers created with `createsuperuser` sign in with a password,
# at /accounts/login/break-glass/ (docs/sso.md).
LOCAL_LOGIN = envbool("LOCAL_LOGIN", True)
if not LOCAL_LOGIN and not OIDC_ENABLED:
    raise ImproperlyConfigured("LOCAL_LOGIN=false needs OIDC_ISSUER: nobody but superusers could sign in.")

# Internationalisation ------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Static files --------------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise serves from finders until collectstatic
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# Security ------------------------------------------------------------------------------------
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
# htmx reads the token from the hx-headers attribute on <body>, never from the cookie.
CSRF_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
        "base-uri": [SELF],
        "object-src": [NONE],
    }
}


# Celery --------------------------------------------------------------------------------------
def _broker_from_env() -> str:
    url = envurl(
        "CELERY_BROKER_URL",
        "sqla+sqlite:///var/celery.sqlite3",
        schemes=("sqla+sqlite", "redis", "rediss", "amqp", "amqps", "pyamqp", "memory"),
    )
    prefix = "sqla+sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        url = prefix + str(BASE_DIR / url[len(prefix) :])
    return url


CELERY_BROKER_URL = _broker_from_env()
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# After a reconnect Celery lowers the prefetch while tasks of the lost connection run, and
# raises it again as they finish; a worker whose apply spanned a RabbitMQ restart was seen to
# take nothing more afterwards (tests/test_broker_restart.py). Acks are late: the most it
# over-fetches without the reduction is one message per task still running.
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
# How long a broker may hold an unacknowledged task before redelivering it; task retries
# back off to well below this so a retry never races a redelivery.
CELERY_VISIBILITY_TIMEOUT = envint("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)
# Every broker redelivers after it, the embedded SQLite one included (config/broker.py). On the
# SQLite broker and Redis a worker takes from its queues in the order they are listed (the apply
# queue first); RabbitMQ hands out from each queue in turn (docs/operations.md).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
if not CELERY_BROKER_URL.startswith(("amqp", "pyamqp")):
    CELERY_BROKER_TRANSPORT_OPTIONS["queue_order_strategy"] = "priority"
# Promotions never wait behind notifications or sweeps: a bulk of 200 requests once queued 391
# webhooks and 302 e-mails ahead of its 111 applies in one FIFO queue. A worker started without
# -Q consumes all three queues, in this order; `-Q apply` makes a worker that only applies.
TASK_QUEUE_NAMES = ("apply", "sync", "notify")
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in TASK_QUEUE_NAMES
]
CELERY_TASK_DEFAULT_QUEUE = "sync"  # the sync, the sweeps and every other periodic task
CELERY_TASK_ROUTES = {
    "promotions.apply_promotion": {"queue": "apply"},
    "promotions.compute_manifest": {"queue": "apply"},
    "promotions.revert_drift": {"queue": "apply"},
    # Beat's heartbeat proves that the applying side consumes.
    "promotions.record_heartbeat": {"queue": "apply"},
    "promotions.send_email": {"queue": "notify"},
    "promotions.deliver_webhook": {"queue": "notify"},
}
# Publishing must not hang a web request when the broker is down: the outbox sweeper
# re-enqueues whatever could not be published. One retry, at once, on a new connection: after a
# broker restart every pooled connection is dead, and without it each process's first publish
# would be left to a sweeper (tests/test_broker_restart.py).
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0,
    "interval_max": 0,
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# MLflow --------------------------------------------------------------------------------------
MLFLOW_TRACKING_URI = envurl("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000", schemes=("http", "https"))
MLFLOW_TIMEOUT_SECONDS = envint("MLFLOW_TIMEOUT_SECONDS", 10, minimum=1)
# A request page that reads a version's model files from MLflow waits at most this per call.
MLFLOW_PAGE_TIMEOUT_SECONDS = envint("MLFLOW_PAGE_TIMEOUT_SECONDS", 3, minimum=1)
# Where links to MLflow's UI point. Empty: the tracking URI, without any credentials it carries
# (registry_sync.gateway.ui_base_url), read when a link is made so a changed URI follows.
MLFLOW_UI_URL = envurl("MLFLOW_UI_URL", "", schemes=("http", "https")) if envstr("MLFLOW_UI_URL", "") else ""
MLFLOW_WEBHOOK_SECRET = envstr("MLFLOW_WEBHOOK_SECRET", "")
SYNC_INTERVAL_SECONDS = envint("SYNC_INTERVAL_SECONDS", 60, minimum=5)
# The delta poll: the versions MLflow updated since the last poll (legacy stage transitions send
# no webhook), one MLflow call when fewer than a page changed. The full sync stays the safety net.
SYNC_DELTA_INTERVAL_SECONDS = envint("SYNC_DELTA_INTERVAL_SECONDS", 10, minimum=1)

# Logging -------------------------------------------------------------------------------------
# Every line passes through common.redact before it is written: an error text may carry a URL
# with its password, or a configured token.
# LOG_FORMAT=json writes one JSON object per line (common/log_format.py), with the request id,
# the task and the promotion request each line is about (common/log_context.py).
LOG_FORMAT = envchoice("LOG_FORMAT", "plain", choices=("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "common.log_context.ContextFilter"},
        "redact": {"()": "common.redact.RedactingFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "common.log_format.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own handlers (installed before these settings are read) would write its
        # records unredacted before they reach the root's: its records go through the root only.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "INFO"},
        "axes": {"level": "WARNING"},
    },
}

# Promotions ----------------------------------------------------------------------------------
PROMOTION_MAX_ATTEMPTS = envint("PROMOTION_MAX_ATTEMPTS", 5, minimum=1)
PROMOTION_SWEEP_INTERVAL_SECONDS = envint("PROMOTION_SWEEP_INTERVAL_SECONDS", 60, minimum=1)
PROMOTION_STUCK_AFTER_SECONDS = envint("PROMOTION_STUCK_AFTER_SECONDS", 300, minimum=1)
# A worker told to stop (SIGTERM, Ctrl-C) finishes its running tasks within this, or leaves them
# to the next worker and exits (config/celery.py): keep it below the orchestrator's own limit.
PROMOTION_SHUTDOWN_GRACE_SECONDS = envint("PROMOTION_SHUTDOWN_GRACE_SECONDS", 25, minimum=1)
# An apply attempt holds its request for this long and renews the hold every third of it while
# it works: another attempt takes over only after the holder stopped renewing (crashed, frozen).
# Shorter recovers a dead worker sooner; it must stay well above a database round trip.
PROMOTION_LEASE_SECONDS = envint("PROMOTION_LEASE_SECONDS", 60, minimum=1)
# A stage or alias change a sync sees is ours, not drift, when a request for it was approved,
# applying or applied within this window: longer tolerates a slower sync, and hides more drift.
PROMOTION_DRIFT_WINDOW_SECONDS = envint("PROMOTION_DRIFT_WINDOW_SECONDS", 3600, minimum=1)
# Retry backoff: base * 2**attempt with full jitter, capped well below the visibility timeout.
PROMOTION_RETRY_BASE_SECONDS = envint("PROMOTION_RETRY_BASE_SECONDS", 2, minimum=0)
PROMOTION_RETRY_CAP_SECONDS = min(
    envint("PROMOTION_RETRY_CAP_SECONDS", 120, minimum=1), CELERY_VISIBILITY_TIMEOUT // 4
)
EXPIRE_INTERVAL_SECONDS = envint("EXPIRE_INTERVAL_SECONDS", 300, minimum=5)
# How often the beat releases scheduled requests whose deployment window has opened: a request
# is applied at most one interval (plus the apply itself) after its window opens.
PROMOTION_SCHEDULE_INTERVAL_SECONDS = envint("PROMOTION_SCHEDULE_INTERVAL_SECONDS", 30, minimum=1)
# How often the worker looks for requests pending past their stage's escalate_after.
PROMOTION_ESCALATE_INTERVAL_SECONDS = envint("PROMOTION_ESCALATE_INTERVAL_SECONDS", 300, minimum=5)
# Approvals are bound to the model's files: the worker records every file's SHA-256 when a
# request is filed, and at apply time checks the files again. `full` hashes every file again;
# `quick` compares all sizes and hashes only MLmodel and files of at most
# PROMOTION_MANIFEST_QUICK_MAX_BYTES (much faster for large models; a same-size rewrite of a
# large file goes unseen); `off` records nothing and approvals cover the metadata only.
PROMOTION_MANIFEST_CHECK = envchoice("PROMOTION_MANIFEST_CHECK", "full", choices=("full", "quick", "off"))
if PROMOTION_MANIFEST_CHECK == "off" and not DEBUG:
    # Off, an approval would not bind the bytes that get applied: a development switch only.
    raise ImproperlyConfigured(
        "PROMOTION_MANIFEST_CHECK=off is for development (DEBUG=true) only: in production every "
        "approval is bound to the model's files (use full or quick)."
    )
PROMOTION_MANIFEST_QUICK_MAX_BYTES = envint("PROMOTION_MANIFEST_QUICK_MAX_BYTES", 1024 * 1024, minimum=0)

# Audit log keys -----------------------------------------------------------------------------
# With a key, the chain head, periodic seals and every export manifest carry an HMAC-SHA256 the
# database never holds (docs/security.md); without one, the log is verified unsigned.
AUDIT_SIGNING_KEY_MIN_LENGTH = 32


def _audit_key_id(secret: str) -> str:
    # A name for a key that gives nothing of it away, so rotation works without naming keys.
    return "k" + hmac.new(secret.encode(), b"audit-signing-key-id", hashlib.sha256).hexdigest()[:12]


def _audit_old_keys_from_env() -> dict[str, str]:
    keys = {}
    for item in envlist("AUDIT_SIGNING_KEYS_OLD", []):
        key_id, sep, secret = item.partition(":")
        if not sep or not key_id or len(secret) < AUDIT_SIGNING_KEY_MIN_LENGTH:
            raise ImproperlyConfigured(
                "AUDIT_SIGNING_KEYS_OLD must be a comma separated list of KEY_ID:SECRET, each "
                f"secret at least {AUDIT_SIGNING_KEY_MIN_LENGTH} characters."
            )
        keys[key_id] = secret
    return keys


AUDIT_SIGNING_KEY = envstr("AUDIT_SIGNING_KEY", "")
if AUDIT_SIGNING_KEY and len(AUDIT_SIGNING_KEY) < AUDIT_SIGNING_KEY_MIN_LENGTH:
    raise ImproperlyConfigured(
        f"AUDIT_SIGNING_KEY must be at least {AUDIT_SIGNING_KEY_MIN_LENGTH} characters."
    )
AUDIT_SIGNING_KEY_ID = (
    envstr("AUDIT_SIGNING_KEY_ID", _audit_key_id(AUDIT_SIGNING_KEY)) if AUDIT_SIGNING_KEY else ""
)
AUDIT_SIGNING_KEYS_OLD = _audit_old_keys_from_env()
if AUDIT_SIGNING_KEY_ID in AUDIT_SIGNING_KEYS_OLD:
    raise ImproperlyConfigured(f"AUDIT_SIGNING_KEYS_OLD reuses the current key id {AUDIT_SIGNING_KEY_ID!r}.")
# A seal every this many entries (by record()), and by beat every so many seconds: entries after
# the last seal are covered only by the chain head's MAC.
AUDIT_SEAL_EVERY = envint("AUDIT_SEAL_EVERY", 100, minimum=1)
AUDIT_SEAL_INTERVAL_SECONDS = envint("AUDIT_SEAL_INTERVAL_SECONDS", 300, minimum=10)
# How often the worker walks the whole chain and, when it verifies, records so (audit.verified):
# /metrics reports the time since, for an alert when verification stops.
AUDIT_VERIFY_INTERVAL_SECONDS = envint("AUDIT_VERIFY_INTERVAL_SECONDS", 86400, minimum=60)

# JSON API, notifications and webhooks --------------------------------------------------------
# django-ninja as an app only for its vendored Swagger UI (templates and static files): the docs
# page at /api/docs then loads no script from a CDN and runs under the site's strict CSP.
INSTALLED_APPS += ["ninja"]
# Links in e-mails and webhook bodies point here.
SITE_URL = envurl("SITE_URL", "http://127.0.0.1:8000", schemes=("http", "https"))
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10, minimum=1)
EMAIL_FILE_PATH = envstr("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "promotions@localhost")
# E-mails are recorded (OutboundEmail) and retried up to this many attempts, then `failed`.
EMAIL_MAX_ATTEMPTS = envint("EMAIL_MAX_ATTEMPTS", 4, minimum=1)
# An e-mail nobody sent within this long (broker down at commit, worker gone) is published again;
# an attempt still sending after it is taken over, so keep it above the slowest send.
EMAIL_STUCK_AFTER_SECONDS = envint("EMAIL_STUCK_AFTER_SECONDS", 300, minimum=30)
EMAIL_SWEEP_INTERVAL_SECONDS = envint("EMAIL_SWEEP_INTERVAL_SECONDS", 60, minimum=5)
# The applied/failed e-mail of a bulk's request waits at most this long for the bulk's other
# requests still being applied, so that the requester gets one digest, not one e-mail each.
EMAIL_BULK_GATHER_SECONDS = envint("EMAIL_BULK_GATHER_SECONDS", 300, minimum=0)
# A webhook target that hangs holds one worker thread for at most this long per attempt.
WEBHOOK_TIMEOUT_SECONDS = envint("WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1)
WEBHOOK_MAX_ATTEMPTS = envint("WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = envint("WEBHOOK_RETRY_BASE_SECONDS", 5, minimum=0)
WEBHOOK_STUCK_AFTER_SECONDS = envint("WEBHOOK_STUCK_AFTER_SECONDS", 900, minimum=10)
# Retries wait at most a third of the stuck threshold, so the sweeper never races a retry.
WEBHOOK_RETRY_CAP_SECONDS = min(
    envint("WEBHOOK_RETRY_CAP_SECONDS", 300, minimum=1), WEBHOOK_STUCK_AFTER_SECONDS // 3
)
# Outbound webhooks go to public addresses only, unless internal receivers are meant.
WEBHOOK_ALLOW_PRIVATE_NETWORKS = envbool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)
WEBHOOK_SWEEP_INTERVAL_SECONDS = envint("WEBHOOK_SWEEP_INTERVAL_SECONDS", 120, minimum=5)

# Break-glass: an emergency change owes its retrospective review within this many hours; the
# overdue ones are reminded (e-mail and audit entry) every so many seconds, once each per interval.
BREAK_GLASS_REVIEW_HOURS = envint("BREAK_GLASS_REVIEW_HOURS", 24, minimum=1)
BREAK_GLASS_REMIND_INTERVAL_SECONDS = envint("BREAK_GLASS_REMIND_INTERVAL_SECONDS", 86400, minimum=60)

# Health --------------------------------------------------------------------------------------
# Anonymous callers learn only ok/degraded; the details (which part is down and why) need a
# staff session or `Authorization: Bearer $HEALTHZ_TOKEN`. Empty: no token grants them.
HEALTHZ_TOKEN = envstr("HEALTHZ_TOKEN", "")
# One set of checks serves every caller for this long, so a flood of probes is not a flood of
# broker connections and MLflow calls.
HEALTHZ_CACHE_SECONDS = envint("HEALTHZ_CACHE_SECONDS", 5, minimum=0)

# Metrics (`/metrics`, Prometheus text format; docs/operations.md) -------------------------------
# A scraper needs `Authorization: Bearer $METRICS_TOKEN`, or to call from one of
# METRICS_ALLOWED_NETWORKS (CIDRs, matched against the client address as TRUSTED_PROXY_COUNT
# finds it). Neither set: /metrics answers 404 to everyone.
METRICS_TOKEN = envstr("METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = envnetworks("METRICS_ALLOWED_NETWORKS")
# Model names come from MLflow, where anyone may register one: only this many get a label of
# their own (the ones with the most open requests), the rest are counted as "other".
METRICS_MODEL_LABEL_CAP = envint("METRICS_MODEL_LABEL_CAP", 100, minimum=0)
# Where every web and worker process writes its counters, for /metrics to add up. It must exist
# and be emptied when the processes start. prometheus_client reads the variable itself, when its
# first metric is made: it is put in the environment here, before anything imports the client.
PROMETHEUS_MULTIPROC_DIR = envstr("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus") if DEBUG else "")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR

# Beat: every periodic task, in one place ------------------------------------------------------
HEARTBEAT_INTERVAL_SECONDS = 60
CELERY_BEAT_SCHEDULE = {
    # A poll not started within its interval is dropped: the next one reads the same changes.
    "sync-registry-delta": {
        "task": "registry_sync.sync_delta",
        "schedule": float(SYNC_DELTA_INTERVAL_SECONDS),
        "options": {"expires": float(SYNC_DELTA_INTERVAL_SECONDS)},
    },
    "sync-registry": {"task": "registry_sync.sync_registry", "schedule": float(SYNC_INTERVAL_SECONDS)},
    "worker-heartbeat": {
        "task": "promotions.record_heartbeat",
        "schedule": float(HEARTBEAT_INTERVAL_SECONDS),
        "args": ["beat"],
    },
    "sweep-approved-requests": {
        "task": "promotions.sweep_requests",
        "schedule": float(PROMOTION_SWEEP_INTERVAL_SECONDS),
    },
    "expire-requests": {"task": "promotions.expire_requests", "schedule": float(EXPIRE_INTERVAL_SECONDS)},
    # A release not started within its interval is dropped: the next one finds the same requests.
    "release-scheduled-requests": {
        "task": "promotions.release_scheduled",
        "schedule": float(PROMOTION_SCHEDULE_INTERVAL_SECONDS),
        "options": {"expires": float(PROMOTION_SCHEDULE_INTERVAL_SECONDS)},
    },
    "escalate-requests": {
        "task": "promotions.escalate_requests",
        "schedule": float(PROMOTION_ESCALATE_INTERVAL_SECONDS),
    },
    "sweep-webhook-deliveries": {
        "task": "promotions.sweep_deliveries",
        "schedule": float(WEBHOOK_SWEEP_INTERVAL_SECONDS),
    },
    "sweep-emails": {"task": "promotions.sweep_emails", "schedule": float(EMAIL_SWEEP_INTERVAL_SECONDS)},
    "remind-retrospective-reviews": {
        "task": "promotions.remind_retrospective_reviews",
        "schedule": float(BREAK_GLASS_REMIND_INTERVAL_SECONDS),
    },
    # Does nothing without AUDIT_SIGNING_KEY, or when nothing was recorded since the last seal.
    "seal-audit-log": {"task": "promotions.seal_audit_log", "schedule": float(AUDIT_SEAL_INTERVAL_SECONDS)},
    "verify-audit-log": {
        "task": "promotions.verify_audit_log",
        "schedule": float(AUDIT_VERIFY_INTERVAL_SECONDS),
    },
}
