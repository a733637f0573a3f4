"""Keel's one settings file, driven by environment variables.

With no variables set, Keel runs embedded: SQLite, a filesystem Celery broker
and an in-process channel layer, all under ``KEEL_DATA_DIR``.  ``DATABASE_URL``
switches to PostgreSQL and ``REDIS_URL`` to Redis (broker, results, channels).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
KEEL_VERSION = "0.1.0"


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={value!r}: use 1/0, true/false, yes/no or on/off")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a whole number") from None


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


KEEL_DATA_DIR = Path(os.environ.get("KEEL_DATA_DIR") or BASE_DIR / "data").resolve()
KEEL_DATA_DIR.mkdir(parents=True, exist_ok=True)
KEEL_MODELS_DIR = KEEL_DATA_DIR / "models"
# Checkpoints may only be registered and loaded from under these folders.
KEEL_CHECKPOINT_ROOTS = [
    Path(p).expanduser().resolve() for p in envlist("KEEL_CHECKPOINT_ROOTS", [str(KEEL_MODELS_DIR)])
]

# Heatmap cells and grades with fewer items than this are marked, not coloured or graded.
try:
    KEEL_MIN_CELL_ITEMS = int(os.environ.get("KEEL_MIN_CELL_ITEMS", "3"))
except ValueError:
    raise ImproperlyConfigured("KEEL_MIN_CELL_ITEMS must be a whole number, e.g. 3") from None
if KEEL_MIN_CELL_ITEMS < 1:
    raise ImproperlyConfigured("KEEL_MIN_CELL_ITEMS must be at least 1")

# Comparisons of finished runs are cached (they never change once finished); in Redis when
# REDIS_URL is set (below), else per process.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                      "OPTIONS": {"MAX_ENTRIES": 2000}}}  # fmt: skip


def _secret_key() -> str:
    """From the environment; else one made once for this data directory."""
    if os.environ.get("KEEL_SECRET_KEY"):
        return os.environ["KEEL_SECRET_KEY"]
    key_file = KEEL_DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("KEEL_DEBUG", False)
ALLOWED_HOSTS = envlist("KEEL_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("KEEL_CSRF_TRUSTED_ORIGINS", [])

# Behind TLS (production): secure cookies, HSTS, redirect to https.
KEEL_HTTPS = envbool("KEEL_HTTPS", False)
SESSION_COOKIE_SECURE = KEEL_HTTPS
CSRF_COOKIE_SECURE = KEEL_HTTPS
SECURE_SSL_REDIRECT = KEEL_HTTPS
SECURE_HSTS_SECONDS = 31_536_000 if KEEL_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = KEEL_HTTPS
SECURE_HSTS_PRELOAD = KEEL_HTTPS
if KEEL_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "config.admin.KeelAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "models_registry",
    "audits",
    "gpu_tasks",
    "config.apps.KeelSecurityConfig",  # the login lock-out's signals (config/lockout.py)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",  # KEEL_CSP, below
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.security.InputLimitsMiddleware",  # NUL and size limits, with a sentence
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "models_registry.roles.RoleRequiredMiddleware",
    "audits.trail.ActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "audits.context_processors.keel",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # No persistent connections: under ASGI each request runs in its own thread and Django
    # would leave one open connection per request until PostgreSQL refuses new clients.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    # A database that stops answering fails a connection in seconds, not minutes: health
    # checks answer, and workers go on to their outage handling (gpu_tasks/progress.py).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 10)
    # A pool of connections per process: under load, requests beyond it wait for a
    # connection instead of each opening its own until PostgreSQL refuses clients (100 by
    # default). KEEL_DB_POOL=0 turns it off (e.g. behind PgBouncer).
    if envint("KEEL_DB_POOL", 10) > 0:
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1, "max_size": envint("KEEL_DB_POOL", 10), "timeout": 30,
        }  # fmt: skip
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": KEEL_DATA_DIR / "keel.sqlite3",
            # A file, not memory, so a worker process can share the test database.
            "TEST": {"NAME": str(KEEL_DATA_DIR / "test-keel.sqlite3")},
        }
    }
# HTTP requests one web process works on at once (config/asgi.py, Admission); the rest wait
# their turn. Below the pool's size, so that a websocket's database call finds a connection
# at once. 0: no limit (the default without a pool).
_pool = DATABASES["default"].get("OPTIONS", {}).get("pool")
KEEL_WEB_REQUESTS = envint("KEEL_WEB_REQUESTS", max(2, _pool["max_size"] - 2) if _pool else 0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write concurrently: WAL lets readers go on
    # while one writer holds the lock; IMMEDIATE avoids lock-upgrade deadlocks.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Broker, results and channel layer --------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    # Priorities (an audit's priority): one Redis list per step, 0 served first. A message
    # taken but not acknowledged comes back after visibility_timeout; the reaper is faster.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "priority_steps": [0, 3, 6],
        "sep": ":",
        "queue_order_strategy": "priority",
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 times reads out after 5 s, exactly the layer's blocking-pop
            # wait: give reads room or every idle socket dies with a TimeoutError.
            # Hundreds of pages closing at once must not exhaust the pool (redis-py raises
            # rather than waits, and a failed group_discard leaves a dead channel behind).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 2000}]
            },
        }
    }
    # Shared by every web process, so a comparison is computed once, not once per worker.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "keel",
        }
    }
else:
    _broker_dir = KEEL_DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # else ./control in the working dir
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = None
    # Only carries messages inside one process; the progress consumer falls
    # back to polling stored progress (see audits.consumers).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ROUTES = {
    "gpu_tasks.tasks.evaluate_run": {"queue": "evaluate"},
    "gpu_tasks.tasks.train_run": {"queue": "train"},
}
CELERY_TASK_DEFAULT_QUEUE = "evaluate"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_PRIORITY = 3  # "normal" (audits.models.Priority)
# The reaper (gpu_tasks/reaper.py) runs on Celery beat: it queues again the runs whose
# worker stopped answering and the queued runs whose message the broker lost.
CELERY_BEAT_SCHEDULE = {
    "reap-stale-runs": {"task": "gpu_tasks.tasks.reap", "schedule": 60.0,
                        "options": {"priority": 0}},
}  # fmt: skip

# --- Workers ----------------------------------------------------------------
# A running run's worker writes a heartbeat every KEEL_HEARTBEAT_SECONDS; one silent for
# KEEL_STALE_AFTER seconds is taken to be dead and its run queued again, at most
# KEEL_MAX_ATTEMPTS times in all before the run is failed.
KEEL_HEARTBEAT_SECONDS = envint("KEEL_HEARTBEAT_SECONDS", 15)
KEEL_STALE_AFTER = envint("KEEL_STALE_AFTER", 300)
KEEL_MAX_ATTEMPTS = envint("KEEL_MAX_ATTEMPTS", 3)
# Each worker node also reaps this often from its main process (beat does it too).
KEEL_REAP_EVERY = envint("KEEL_REAP_EVERY", 60)
# The devices this worker host may use (e.g. "cuda:0,cuda:1", or "cpu"), each taken by at
# most KEEL_JOBS_PER_DEVICE jobs at once; empty: the best one found (see gpu_tasks/slots.py).
KEEL_WORKER_DEVICES = envlist("KEEL_WORKER_DEVICES", [])
KEEL_JOBS_PER_DEVICE = envint("KEEL_JOBS_PER_DEVICE", 1)

# --- Auth -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Keel's roles (models_registry/roles.py) grant Django model permissions to admins only.
AUTHENTICATION_BACKENDS = [
    "config.lockout.LockoutBackend",  # first: refuses every sign-in while locked out
    "django.contrib.auth.backends.ModelBackend",
    "config.admin.RoleBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "audits:list"
LOGOUT_REDIRECT_URL = "login"

# --- REST API (/api/v1/) -------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "audits.api.throttling.LimitedTokenAuthentication",  # counts failed tokens
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["audits.api.permissions.Reader"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "audits.api.permissions.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Keel API",
    "DESCRIPTION": "Alignment audits of language-model checkpoints: register, queue, read "
    "scores and report cards, export, and gate releases. Authenticate with "
    "`Authorization: Token <key>` (create one on your account page or with "
    "`manage.py drf_create_token USER`).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["audits.api.permissions.Reader"],
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "audits.api.schema.add_error_responses",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("KEEL_STATIC_ROOT") or KEEL_DATA_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# plotly.js is served from the plotly package's own copy: no CDN, no vendored file.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/plotly", Path(importlib.util.find_spec("plotly").origin).parent / "package_data"),
]
# Serve straight from the source folders: the embedded mode needs no collectstatic.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("KEEL_LOG_LEVEL", "INFO")},
    # WeasyPrint and fontTools log every layout step at INFO.
    "loggers": {name: {"level": "WARNING"} for name in ("weasyprint", "fontTools")},
}

# --- Keel -----------------------------------------------------------------
# Items scored per forward batch are capped by this many tokens.
# 0: 16384 on CUDA (measured 2.4x faster than 4096 on an H200, BENCHMARKS.md), else 4096.
KEEL_BATCH_TOKENS = envint("KEEL_BATCH_TOKENS", 0)
# auto: bf16 on CUDA that supports it, and on CPUs where a bf16 matmul measures faster
# than fp32 (AMX); fp32 elsewhere. Or float32 / bfloat16 / float16 to pin it.
KEEL_DTYPE = os.environ.get("KEEL_DTYPE", "auto")
KEEL_DEFAULT_CHECKPOINT = "smollm2-135m-instruct"
# Limits on suite files a user imports.
KEEL_SUITE_MAX_BYTES = envint("KEEL_SUITE_MAX_BYTES", 20 * 1024 * 1024)
KEEL_SUITE_MAX_ITEMS = envint("KEEL_SUITE_MAX_ITEMS", 20_000)


# --- Limits and security ------------------------------------------------------
# What keeps Keel safe from hostile or careless input; README, "Security and limits".


def envpositive(name: str, default: int) -> int:
    value = envint(name, default)
    if value < 1:
        raise ImproperlyConfigured(f"{name}={value}: it must be at least 1")
    return value


def envrate(name: str, default: str) -> str:
    """A DRF rate such as 600/min: a whole number, a slash, and s, min, hour or day."""
    value = os.environ.get(name) or default
    number, _, period = value.partition("/")
    if not (number.isascii() and number.isdigit() and int(number) > 0) or period not in (
        "s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day"
    ):  # fmt: skip
        raise ImproperlyConfigured(f"{name}={value!r}: write requests per period, e.g. 600/min")
    return value


# Login lock-out (config/lockout.py): this many failed sign-ins for one account, or from one
# address (an office behind one address holds many people: it gets more), within the window,
# and sign-ins are refused for the window, even with the right password.
KEEL_LOGIN_MAX_FAILURES = envpositive("KEEL_LOGIN_MAX_FAILURES", 5)
KEEL_LOGIN_MAX_FAILURES_PER_ADDRESS = envpositive("KEEL_LOGIN_MAX_FAILURES_PER_ADDRESS", 20)
KEEL_LOGIN_LOCKOUT_MINUTES = envpositive("KEEL_LOGIN_LOCKOUT_MINUTES", 15)

# API rate limits (audits/api/throttling.py), counted in the cache above: requests per user
# and per anonymous address, and failed token authentications per address in the window.
KEEL_API_RATE_USER = envrate("KEEL_API_RATE_USER", "600/min")
KEEL_API_RATE_ANON = envrate("KEEL_API_RATE_ANON", "60/min")
KEEL_API_MAX_AUTH_FAILURES = envpositive("KEEL_API_MAX_AUTH_FAILURES", 20)
REST_FRAMEWORK |= {
    "DEFAULT_THROTTLE_CLASSES": [
        "audits.api.throttling.UserRate", "audits.api.throttling.AnonRate",
    ],
    "DEFAULT_THROTTLE_RATES": {"user": KEEL_API_RATE_USER, "anon": KEEL_API_RATE_ANON},
    # The client's address is REMOTE_ADDR (uvicorn sets it from a trusted proxy's
    # X-Forwarded-For); never the header as the client sent it.
    "NUM_PROXIES": 0,
}  # fmt: skip

# Request limits (config/security.py): the largest upload (a suite file and its form), and
# Django's own limits on forms, answered with a sentence instead of a bare 400.
KEEL_MAX_UPLOAD_BYTES = KEEL_SUITE_MAX_BYTES + 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # fields other than files (Django's default)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
DATA_UPLOAD_MAX_NUMBER_FILES = 10

# Content-Security-Policy: scripts only from Keel's own static files (no inline script, no
# eval); styles also inline, since plotly.js writes <style> elements and style attributes;
# images also data: URIs (plotly draws a heatmap as a data: PNG). 'self' in connect-src
# covers the websocket to the same host (ws: or wss:).
KEEL_CSP = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:", "font-src 'self'", "connect-src 'self'", "object-src 'none'",
    "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'",
))  # fmt: skip
