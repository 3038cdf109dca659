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

from .settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
LOG_LEVEL = "DEBUG"
LOGGING["root"]["level"] = "DEBUG"  # noqa: F405  (canary tests read DEBUG logs)
LOGGING["loggers"]["asyncio"] = {"level": "WARNING"}  # noqa: F405
