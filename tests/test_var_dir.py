"""VAR_DIR holds all local state, and the embedded SQLite database takes concurrent writers.

Every test runs Django in a subprocess with its own VAR_DIR (eneo_site.settings, DATABASE_URL unset), as the
quick start does: settings are read at start-up, so this is how the environment reaches them.
"""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)

# Writers that run beside each other in one process, as in the server: request threads running a service
# (a transaction that reads, then writes: tenant_update), the gateway's usage writer (batches of UsageRecord rows)
# and one long write transaction. Prints the errors raised and the rows written, as JSON.
LOAD = r"""
import json, sys, threading, time
from decimal import Decimal

from django.conf import settings
if "--plain" in sys.argv:  # SQLite's defaults: deferred transactions, 5 s timeout, rollback journal
    settings.DATABASES["default"]["OPTIONS"] = {}
import django
django.setup()
from django.db import connection, transaction
from django.utils import timezone

from providers.gateway.usage import USAGE_COLUMNS, _write
from providers.models import UsageRecord
from tenants.actors import SYSTEM
from tenants.models import AuditEvent
from tenants.services import tenant_create, tenant_update

THREADS, TRANSACTIONS, BATCH = 4, 50, 20
tenants = [tenant_create(actor=SYSTEM, name=f"Tenant {i}", slug=f"t{i}") for i in range(THREADS)]
audit_before = AuditEvent.objects.count()
connection.close()
errors = []
start = threading.Barrier(2 * THREADS + 1)


def run(work):
    try:
        start.wait()
        work()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def requests(tenant):  # a REST request's service call: reads (full_clean), then writes the row and its audit
    for i in range(TRANSACTIONS):
        tenant_update(actor=SYSTEM, tenant=tenant, name=f"{tenant.slug} {i}")


def usage(tenant):  # the gateway's usage writer: one INSERT ... executemany per batch, in a transaction
    for i in range(TRANSACTIONS):
        values = {"tenant_id": tenant.pk, "requested_model": "gpt-x", "endpoint": "chat.completions", "status": "ok",
                  "tokens_in": 10, "tokens_out": 5, "cost": Decimal("0.0001"), "created_at": timezone.now()}
        row = tuple(values[c] if c in values else UsageRecord._meta.get_field(c).get_default() for c in USAGE_COLUMNS)
        _write([row] * BATCH, {})


def long_transaction():  # e.g. a discovery saving many models: holds the write lock for a second
    with transaction.atomic():
        AuditEvent.objects.create(actor="system", action="long.start", target_type="test")
        time.sleep(1.0)
        AuditEvent.objects.create(actor="system", action="long.end", target_type="test")


workers = [threading.Thread(target=run, args=(lambda t=t: requests(t),)) for t in tenants]
workers += [threading.Thread(target=run, args=(lambda t=t: usage(t),)) for t in tenants]
workers.append(threading.Thread(target=run, args=(long_transaction,)))
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({
    "errors": errors,
    "audit": AuditEvent.objects.count() - audit_before,
    "usage": UsageRecord.objects.count(),
    "journal_mode": connection.cursor().execute("PRAGMA journal_mode").fetchone()[0],
    "expected_audit": THREADS * TRANSACTIONS + 2,
    "expected_usage": THREADS * TRANSACTIONS * BATCH,
}))
"""

PRINT_SETTINGS = r"""
import json
from django.conf import settings
print(json.dumps({
    "VAR_DIR": str(settings.VAR_DIR),
    "DATABASE": settings.DATABASES["default"],
    "STATIC_ROOT": str(settings.STATIC_ROOT),
    "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    "CELERY_BROKER_TRANSPORT_OPTIONS": getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}),
    "CELERY_BEAT_SCHEDULE_FILENAME": settings.CELERY_BEAT_SCHEDULE_FILENAME,
}))
"""


def _env(var_dir, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {
        "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "RATE_LIMIT_REDIS_URL", "VAR_DIR", "SQLITE_BUSY_TIMEOUT"}}
    env.update(DJANGO_SETTINGS_MODULE="eneo_site.settings", ENV_FILE="/nonexistent", PYTHONPATH=str(BASE_DIR),
               SECRET_KEY=settings.SECRET_KEY, ENCRYPTION_KEY=settings.ENCRYPTION_KEY, LOG_LEVEL="WARNING",
               VAR_DIR=str(var_dir))
    env.update(extra)
    return env


def _python(code, var_dir, *args, cwd, **extra):
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_env(var_dir, **extra),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    """A migrated database file in rollback-journal mode (SQLite's default), copied by each test."""
    var_dir = tmp_path_factory.mktemp("template")
    done = subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), "migrate", "-v0"], cwd=var_dir,
                          env=_env(var_dir), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    db = var_dir / "db.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return db


def _var_dir_with(db: Path, tmp_path: Path, name: str) -> Path:
    var_dir = tmp_path / name
    var_dir.mkdir()
    shutil.copy(db, var_dir / "db.sqlite3")
    return var_dir


def test_concurrent_writers_on_sqlite_never_see_database_is_locked(migrated_db, tmp_path):
    var_dir = _var_dir_with(migrated_db, tmp_path, "var")
    result = _python(LOAD, var_dir, cwd=tmp_path)
    assert result["errors"] == []
    assert (result["audit"], result["usage"]) == (result["expected_audit"], result["expected_usage"])
    assert result["journal_mode"] == "wal"


def test_the_same_load_on_sqlite_defaults_does_hit_database_is_locked(migrated_db, tmp_path):
    """Proves the test above measures something: without WAL, IMMEDIATE and the busy timeout, the same load fails
    (a deferred transaction that read first cannot take the write lock while another writer holds it)."""
    var_dir = _var_dir_with(migrated_db, tmp_path, "var")
    result = _python(LOAD, var_dir, "--plain", cwd=tmp_path)
    assert any("database is locked" in e for e in result["errors"]), result
    assert result["journal_mode"] == "delete"


def test_all_local_state_is_in_var_dir(tmp_path):
    a, b, cwd = tmp_path / "a", tmp_path / "b", tmp_path / "cwd"
    cwd.mkdir()
    for var_dir in (a, b):
        s = _python(PRINT_SETTINGS, var_dir, cwd=cwd)
        assert s["VAR_DIR"] == str(var_dir)
        assert s["CELERY_BROKER_URL"] == "filesystem://"
        folders = s["CELERY_BROKER_TRANSPORT_OPTIONS"]
        assert set(folders) == {"data_folder_in", "data_folder_out", "data_folder_processed", "control_folder"}
        paths = [*folders.values(), s["DATABASE"]["NAME"], s["STATIC_ROOT"], s["CELERY_BEAT_SCHEDULE_FILENAME"]]
        assert all(Path(p).is_relative_to(var_dir) for p in paths), paths
        assert folders["control_folder"] == str(var_dir / "celery" / "control")
        assert (var_dir / "celery" / "control").is_dir()
        assert s["DATABASE"]["OPTIONS"] == {
            "transaction_mode": "IMMEDIATE", "timeout": 20.0,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    assert list(cwd.iterdir()) == []


def test_relative_paths_are_taken_from_the_project_root_not_the_current_directory(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    relative = os.path.relpath(tmp_path / "state", BASE_DIR)
    s = _python(PRINT_SETTINGS, relative, cwd=cwd)
    assert s["VAR_DIR"] == str(tmp_path / "state")
    assert (tmp_path / "state" / "celery" / "queue").is_dir()

    s = _python(PRINT_SETTINGS, tmp_path / "state", cwd=cwd,
                DATABASE_URL=f"sqlite:///{os.path.relpath(tmp_path / 'other.sqlite3', BASE_DIR)}")
    assert s["DATABASE"]["NAME"] == str(tmp_path / "other.sqlite3")
    assert list(cwd.iterdir()) == []


def test_postgresql_gets_no_sqlite_options(tmp_path):
    s = _python(PRINT_SETTINGS, tmp_path / "var", cwd=tmp_path, DATABASE_URL="postgres://u:p@127.0.0.1:1/x",
                CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert "transaction_mode" not in s["DATABASE"]["OPTIONS"]
    assert "control_folder" not in s["CELERY_BROKER_TRANSPORT_OPTIONS"]


def test_a_worker_on_the_embedded_broker_writes_nothing_into_its_current_directory(tmp_path):
    var_dir, cwd = tmp_path / "var", tmp_path / "cwd"
    cwd.mkdir()
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "eneo_site", "worker", "--pool", "solo",
             "--loglevel", "INFO"],
            cwd=cwd, env=_env(var_dir, CELERY_BROKER_URL="filesystem://", LOG_LEVEL="INFO"),
            stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 30
            while time.time() < deadline and "ready." not in log.read_text():
                assert worker.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            assert "ready." in log.read_text(), log.read_text()[-3000:]
        finally:
            worker.terminate()
            worker.wait(15)
    assert list(cwd.iterdir()) == []
    assert list((var_dir / "celery" / "control").glob("*.exchange")), "the worker bound its queue elsewhere"
