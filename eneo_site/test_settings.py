"""Settings for the test suite: fixed keys, fast hashing, eager Celery for service-level tests.

DATABASE_URL picks the database (CI: PostgreSQL); without it, a throw-away SQLite file.
"""
import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789-abcdefghijklmnop")
os.environ.setdefault("ENCRYPTION_KEY", "3bUBeSzZxdnkt6DBxkR7C4_sBGiRTNKrQ_6U7d-CfnI=")
os.environ.setdefault("SUPER_API_KEY", "test-super-api-key-0123456789")
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ["ENV_FILE"] = "/nonexistent"  # never read a developer's .env in tests
# The fake upstream (tests/fake_upstream) listens on 127.0.0.1: an operator-approved internal host. Attacker servers
# in the egress tests listen on 127.0.0.2 / 127.0.0.3, which stay outside the list.
os.environ.setdefault("ENDPOINT_ALLOWED_HOSTS", "127.0.0.1")
# Metric files: one folder per test session, shared with the processes it starts (they inherit the variable).
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="eneo-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)

from .settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = os.environ.get("TEST_CELERY_EAGER", "1") == "1"  # worker processes: 0
CELERY_TASK_EAGER_PROPAGATES = True
LOG_LEVEL = os.environ.get("TEST_LOG_LEVEL", "DEBUG")
LOGGING["root"]["level"] = LOG_LEVEL  # noqa: F405  (canary tests read DEBUG logs)
LOGGING["loggers"]["asyncio"] = {"level": "WARNING"}  # noqa: F405
# The suite sends many bad keys from 127.0.0.1; tests/test_auth_throttle.py lowers this with the settings fixture.
AUTH_FAILURE_LIMIT = 1_000_000

# Worker tests run a real Celery worker in another process: it must see the test database, so SQLite tests
# use a file (PostgreSQL tests use the server's test database anyway), and the broker is Redis when given.
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}  # noqa: F405
if os.environ.get("REDIS_URL"):
    CELERY_BROKER_URL = os.environ["REDIS_URL"]
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 10}
