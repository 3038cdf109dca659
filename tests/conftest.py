import logging
import os

import pytest
from django.conf import settings
from django.db import connection

CANARY = "sk-CANARY-7f3a9c1e5b2d4f6a8c0e-zz91"


def pytest_configure(config):
    # In CI (REQUIRE_SERVICES=1) the suite must run on PostgreSQL, never silently on SQLite.
    if os.environ.get("REQUIRE_SERVICES") == "1" and "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but DATABASE_URL is not a PostgreSQL URL")


@pytest.fixture(autouse=True)
def _no_global_keys(monkeypatch):
    """Global provider keys from the developer's environment must not leak into tests."""
    for name in list(os.environ):
        if name.endswith("_API_KEY") or name in {"VLLM_MODEL_URL", "AZURE_API_BASE", "AZURE_ENDPOINT", "OPENAI_API_BASE"}:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tenant(db):
    from tenants.actors import SYSTEM
    from tenants.services import tenant_create

    return tenant_create(actor=SYSTEM, name="Acme Municipality", slug="acme")


@pytest.fixture
def other_tenant(db):
    from tenants.actors import SYSTEM
    from tenants.services import tenant_create

    return tenant_create(actor=SYSTEM, name="Other Region", slug="other")


@pytest.fixture
def operator(db, django_user_model):
    return django_user_model.objects.create_superuser("operator", "op@example.org", "pw-operator-123")


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def super_headers():
    return {"HTTP_X_API_KEY": settings.SUPER_API_KEY}


@pytest.fixture
def all_logs():
    """Capture every log record at DEBUG, formatted through the project's masking filter."""
    from credentials.masking import SecretMaskingFilter

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.addFilter(SecretMaskingFilter())
    raw = []

    class Raw(logging.Handler):
        def emit(self, record):
            try:
                raw.append(record.getMessage())
            except Exception:
                raw.append(str(record.msg))

    raw_handler = Raw(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(raw_handler)  # first: sees records before any filter rewrites them
    root.addHandler(handler)
    yield {"masked": records, "raw": raw}
    root.removeHandler(handler)
    root.removeHandler(raw_handler)
    root.setLevel(old_level)


def dump_tables_text() -> str:
    """Every row of every table, as text (a 'full database dump')."""
    out = []
    with connection.cursor() as cur:
        for table in connection.introspection.table_names():
            cur.execute(f'SELECT * FROM "{table}"')
            out.extend(repr(row) for row in cur.fetchall())
    return "\n".join(out)
