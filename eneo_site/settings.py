"""Settings, read from the environment (django-environ).

Every variable is listed, with its default, in `.env.example` and in README.md's configuration table.
Secrets (SECRET_KEY, ENCRYPTION_KEY) have no default: a missing one stops start-up with a message that
says how to make one.
"""
import os
import sys
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# LiteLLM must never reach the internet at run time: its model cost map is read from the package.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

env = environ.Env()
_env_file = Path(os.environ.get("ENV_FILE", BASE_DIR / ".env"))
if _env_file.is_file():
    env.read_env(str(_env_file))

# Local state of this instance: the SQLite database, the embedded Celery broker (queue, processed and control
# folders), collected static files, the beat schedule. A relative path is taken from the project root, never
# from the current directory. Two instances on one host need two VAR_DIRs. Created if missing.
VAR_DIR = (BASE_DIR / Path(env.str("VAR_DIR", default="") or "var").expanduser()).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)

# Commands that must work before any key exists (they are how you make one).
_KEYLESS_COMMANDS = {"generate_encryption_key"}
_keyless = len(sys.argv) > 1 and sys.argv[1] in _KEYLESS_COMMANDS


def _required_secret(name: str, how: str) -> str:
    value = env.str(name, default="")
    if not value and not _keyless:
        raise ImproperlyConfigured(f"{name} is not set. {how}")
    return value


SECRET_KEY = _required_secret(
    "SECRET_KEY",
    "Set it to a long random string, e.g. the output of "
    "`python -c \"import secrets; print(secrets.token_urlsafe(50))\"`.",
)

# --- Encryption of stored secrets (credentials app) ----------------------------------------------
# ENCRYPTION_KEY encrypts every new value; ENCRYPTION_KEYS_OLD (comma-separated, newest first) are
# still accepted for reading while `manage.py rotate_encryption_key` re-encrypts the rows.
ENCRYPTION_KEY = _required_secret(
    "ENCRYPTION_KEY",
    "Generate one with `python manage.py generate_encryption_key` and keep a copy with your database "
    "backups: without it no stored credential can be read.",
)
ENCRYPTION_KEYS_OLD = env.list("ENCRYPTION_KEYS_OLD", default=[])
if not _keyless:
    from cryptography.fernet import Fernet

    for _label, _key in [("ENCRYPTION_KEY", ENCRYPTION_KEY)] + [
        (f"ENCRYPTION_KEYS_OLD[{i}]", k) for i, k in enumerate(ENCRYPTION_KEYS_OLD)
    ]:
        try:
            Fernet(_key)
        except Exception:
            raise ImproperlyConfigured(
                f"{_label} is not a valid Fernet key (32 url-safe base64-encoded bytes). "
                "Generate one with `python manage.py generate_encryption_key`."
            ) from None

# Sysadmin key for /api/v1/sysadmin (header X-API-Key). Eneo/Intric names are accepted as aliases.
SUPER_API_KEY = (
    env.str("SUPER_API_KEY", default="")
    or env.str("ENEO_SUPER_API_KEY", default="")
    or env.str("INTRIC_SUPER_API_KEY", default="")
)

# Strict mode: each tenant must bring its own credential; no fallback to provider or global keys.
TENANT_CREDENTIALS_ENABLED = env.bool("TENANT_CREDENTIALS_ENABLED", default=False)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "eneo_site.admin_site.EneoAdminConfig",  # django.contrib.admin with our site (dashboard, ordered index)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",  # so the API docs load Swagger UI from our static files, not from a CDN
    "guardian",
    "axes",
    "django_celery_beat",
    "tenants",
    "credentials",
    "providers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "tenants.throttle.AuthFailureThrottleMiddleware",  # /api/: 429 for an address locked out by failed auth
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "eneo_site.urls"

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
            ],
        },
    },
]

WSGI_APPLICATION = "eneo_site.wsgi.application"
ASGI_APPLICATION = "eneo_site.asgi.application"

# Empty DATABASE_URL = SQLite in VAR_DIR (the embedded run).
DATABASES = {"default": env.db_url_config(env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR}/db.sqlite3")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    _sqlite_name = str(DATABASES["default"]["NAME"])
    if _sqlite_name and _sqlite_name != ":memory:" and not _sqlite_name.startswith("file:"):
        DATABASES["default"]["NAME"] = str((BASE_DIR / _sqlite_name).resolve())  # relative: from the project root
    # Concurrent writers (the gateway's usage writer beside requests, the Celery worker and beat): WAL lets readers
    # run beside the one writer; IMMEDIATE takes the write lock when a transaction begins, so a transaction that
    # read first never fails to upgrade its lock ("database is locked" at once, whatever the timeout); a writer
    # waits up to SQLITE_BUSY_TIMEOUT seconds for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env.float("SQLITE_BUSY_TIMEOUT", default=20.0),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        **DATABASES["default"].get("OPTIONS", {}),  # options in the URL (?timeout=...) win
    }
# Under ASGI each request's sync work runs in its own thread, so persistent per-thread connections would
# leak: PostgreSQL uses psycopg's connection pool instead (DB_POOL_MAX_SIZE connections per process).
if "postgresql" in DATABASES["default"]["ENGINE"] and env.bool("DB_POOL", default=True):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # CONN_HEALTH_CHECKS makes Django give the pool a connection check: one killed by a database restart is
    # replaced on checkout.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
        "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # admin login throttling (django-axes), must come first
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user object

# Admin login throttling (django-axes): after ADMIN_LOGIN_FAILURE_LIMIT failures for one user name from one
# address, that pair is locked out for ADMIN_LOGIN_LOCKOUT_MINUTES (429). Other addresses are not affected.
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("ADMIN_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "tenants.auth.login_locked_out"
AXES_CLIENT_IP_CALLABLE = "tenants.throttle.client_address"  # REMOTE_ADDR; X-Forwarded-For only behind our proxy

# True only when a reverse proxy that terminates TLS is the sole way in: then its X-Forwarded-Proto is trusted
# and the client address is the last X-Forwarded-For entry (the one the proxy appended); otherwise REMOTE_ADDR.
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)

# API key guessing (/v1, REST tenant keys, sysadmin super key): after AUTH_FAILURE_LIMIT failed authentications
# from one client address (IPv6: one /64) within AUTH_FAILURE_WINDOW_SECONDS, that address gets 429 with
# Retry-After for AUTH_FAILURE_WINDOW_SECONDS, valid key or not. Shared via RATE_LIMIT_REDIS_URL. 0 = off.
AUTH_FAILURE_LIMIT = env.int("AUTH_FAILURE_LIMIT", default=10)
AUTH_FAILURE_WINDOW_SECONDS = env.int("AUTH_FAILURE_WINDOW_SECONDS", default=300)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Admin assets are served by the ASGI/WSGI app itself (django.contrib.staticfiles handler in asgi.py),
# so the one-command run needs no web server; put a CDN or reverse proxy in front if you like.

# --- Security (production defaults; DEBUG=true relaxes the cookie/TLS ones for local http) ----------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Internal endpoints (private, loopback, link-local addresses, single-label names) a provider or credential may
# use. Empty = no restriction. E.g. "vllm.internal,*.gpu.example.org,10.20.0.0/16". Public hosts are always fine.
ENDPOINT_ALLOWED_HOSTS = env.list("ENDPOINT_ALLOWED_HOSTS", default=[])
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=10 * 1024 * 1024)
# The health endpoint of a load balancer must not be redirected to https.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# --- Celery ----------------------------------------------------------------------------------------
# Default: kombu's filesystem transport in VAR_DIR/celery (no server). Production and CI: redis://...
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Every folder of the transport is set: kombu's default control folder is "control" in the current directory,
    # where two instances would share exchange bindings.
    _broker_dirs = {name: VAR_DIR / "celery" / name for name in ("queue", "processed", "control")}
    for _dir in _broker_dirs.values():
        _dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dirs["queue"]),
        "data_folder_out": str(_broker_dirs["queue"]),
        "data_folder_processed": str(_broker_dirs["processed"]),
        "control_folder": str(_broker_dirs["control"]),
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Fail fast when Redis is down: callers then run the check inline (providers.checks.jobs) instead of hanging.
    # visibility_timeout: a message taken but not acknowledged this long (its worker died: checks are acknowledged
    # late) goes back to the queue. Keep it above the longest task plus its retry countdown (a check with retries,
    # a health batch: about 2 minutes with the defaults) and below CHECK_STALE_SECONDS. Swept every tenth of it.
    _visibility = env.int("CELERY_VISIBILITY_TIMEOUT", default=300)
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 10,
                                       "visibility_timeout": _visibility, "unacked_restore_throttle": 1,
                                       "unacked_restore_interval": max(1, min(60, _visibility // 10)),
                                       "unacked_mutex_expire": max(1, min(300, _visibility))}
# Task outcomes are stored in our own tables (never secrets); Celery's result backend is off by default.
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_IGNORE_RESULT = CELERY_RESULT_BACKEND is None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")  # beat's local file, not in the current directory

# --- API -------------------------------------------------------------------------------------------
NINJA_PAGINATION_PER_PAGE = 50
NINJA_PAGINATION_MAX_LIMIT = 500

# --- Logging: every handler masks secrets (credentials.masking.SecretMaskingFilter) ----------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
# configure_logging = dictConfig(LOGGING), then the masking filter on every handler that exists at that point,
# including those a server set up before loading Django (uvicorn's, gunicorn's). Celery's worker and beat use it
# too (eneo_site/celery.py). LiteLLM adds its own handler when it is first imported, later: its loggers get the
# filter at logger level below.
LOGGING_CONFIG = "credentials.masking.configure_logging"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"mask_secrets": {"()": "credentials.masking.SecretMaskingFilter"},
                "request_id": {"()": "tenants.request_id.RequestIdFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id", "mask_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "LiteLLM": {"level": env.str("LITELLM_LOG_LEVEL", default="WARNING").upper(), "filters": ["mask_secrets"]},
        "LiteLLM Router": {"level": "WARNING", "filters": ["mask_secrets"]},
        "LiteLLM Proxy": {"level": "WARNING", "filters": ["mask_secrets"]},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
    },
}

# --- Provider calls ----------------------------------------------------------------------------------
PROVIDER_TEST_TIMEOUT = env.float("PROVIDER_TEST_TIMEOUT", default=15.0)  # seconds, connectivity tests
PROBE_MAX_TOKENS_REASONING = env.int("PROBE_MAX_TOKENS_REASONING", default=16)  # 1 token fails reasoning models
API_KEY_PEPPER = env.str("API_KEY_PEPPER", default="")  # HMAC key for tenant API keys (default: SECRET_KEY)

# --- Gateway (/v1) -----------------------------------------------------------------------------------
GATEWAY_TIMEOUT = env.float("GATEWAY_TIMEOUT", default=120.0)  # seconds for one upstream call
# Chat and embeddings on OpenAI-wire providers (openai, azure, hosted_vllm, ...) with our own HTTP client instead of
# LiteLLM (providers/gateway/lean.py); false: every call through LiteLLM
GATEWAY_LEAN_LANE = env.bool("GATEWAY_LEAN_LANE", default=True)
DEFAULT_PROVIDER_TYPE = env.str("DEFAULT_PROVIDER_TYPE", default="openai")  # for model names without a prefix
# A change (revoked key, deleted tenant, disabled provider...) applies in every worker within this many seconds;
# each worker checks the catalog version every half of it, in the background (providers/gateway/catalog.py).
CATALOG_REFRESH_SECONDS = env.float("CATALOG_REFRESH_SECONDS", default=1.0)
CATALOG_MAX_AGE_SECONDS = env.float("CATALOG_MAX_AGE_SECONDS", default=300.0)  # safety net: full background reload
# Browser origins allowed to call /v1 (CORS), comma-separated; empty: none (no CORS headers, preflights refused)
GATEWAY_CORS_ORIGINS = env.list("GATEWAY_CORS_ORIGINS", default=[])
# Browser origins allowed to call the MCP server at /mcp (DNS-rebinding protection), e.g. the MCP Inspector's
# http://localhost:6274; requests without an Origin header (desktop and CLI clients) are always allowed
MCP_ALLOWED_ORIGINS = env.list("MCP_ALLOWED_ORIGINS", default=[])
GATEWAY_MAX_MESSAGES = env.int("GATEWAY_MAX_MESSAGES", default=4096)  # messages in one chat request
GATEWAY_PARSE_IN_THREAD_BYTES = env.int("GATEWAY_PARSE_IN_THREAD_BYTES", default=262144)  # larger bodies: off-loop
USAGE_FLUSH_SECONDS = env.float("USAGE_FLUSH_SECONDS", default=0.5)  # usage records are batched this long
# Raw usage records are kept this many days (0 = for ever); hourly roll-ups are kept for ever. Deleted by the beat
# task providers.tasks.usage_retention_run (hourly), in batches of USAGE_RETENTION_BATCH ids, each its own transaction,
# USAGE_RETENTION_PAUSE seconds apart, at most USAGE_RETENTION_MAX_SECONDS per run (providers/rollups.py).
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=90)
USAGE_RETENTION_BATCH = env.int("USAGE_RETENTION_BATCH", default=5000)
USAGE_RETENTION_PAUSE = env.float("USAGE_RETENTION_PAUSE", default=0.05)
USAGE_RETENTION_MAX_SECONDS = env.float("USAGE_RETENTION_MAX_SECONDS", default=1800.0)
GATEWAY_GC_THRESHOLD = env.int("GATEWAY_GC_THRESHOLD", default=20000)  # gen-0 GC threshold in the server; 0 = default
GATEWAY_BREAKER_FAILURES = env.int("GATEWAY_BREAKER_FAILURES", default=5)  # consecutive failures; 0 = off
GATEWAY_BREAKER_SECONDS = env.float("GATEWAY_BREAKER_SECONDS", default=30.0)  # pause before one trial call
RATE_LIMIT_REDIS_URL = env.str("RATE_LIMIT_REDIS_URL", default="")  # shared rpm/concurrency limits; empty = per process
GATEWAY_LEASE_SECONDS = env.float("GATEWAY_LEASE_SECONDS", default=30.0)  # dead workers' concurrency slots free after

# --- Checks and health (Celery) ------------------------------------------------------------------------
HEALTH_CHECK_TIMEOUT = env.float("HEALTH_CHECK_TIMEOUT", default=10.0)  # seconds per provider probe
HEALTH_CHECK_CONCURRENCY = env.int("HEALTH_CHECK_CONCURRENCY", default=100)  # probes in flight per batch
HEALTH_CHECK_BATCH_SIZE = env.int("HEALTH_CHECK_BATCH_SIZE", default=1000)  # providers per fan-out task
HEALTH_PROBE_MAX_TOKENS = env.int("HEALTH_PROBE_MAX_TOKENS", default=1)  # completion probes (no /models list)
HEALTH_HISTORY_DAYS = env.int("HEALTH_HISTORY_DAYS", default=7)  # scheduled check rows kept
CHECK_RETRY_BACKOFF = env.float("CHECK_RETRY_BACKOFF", default=5.0)  # seconds; doubled per retry (3 retries)
CHECK_STALE_SECONDS = env.int("CHECK_STALE_SECONDS", default=600)  # still queued/running this long: marked failed
PROVIDER_DISCOVERY_TIMEOUT = env.float("PROVIDER_DISCOVERY_TIMEOUT", default=5.0)  # GET {base}/models
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Metrics (/metrics, Prometheus text format; providers/metrics.py) ----------------------------------------
# METRICS_ENABLED=false: /metrics answers 404 and nothing is recorded (no per-call cost).
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
# Bearer token Prometheus must send (Authorization: Bearer <token>). Empty: /metrics is open to anyone who can
# reach it; set it, or block the path at the reverse proxy.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Where every process of this instance (uvicorn workers, Celery worker) writes its metric files (prometheus-client's
# multiprocess mode); one scrape of any web worker adds them all up. One folder per instance and host, local disk
# (a tmpfs is best). Set before prometheus_client is imported: here, in the environment of this process.
PROMETHEUS_MULTIPROC_DIR = str(Path(env.str("PROMETHEUS_MULTIPROC_DIR", default="") or VAR_DIR / "prometheus"))
Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
