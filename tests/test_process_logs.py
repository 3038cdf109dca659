"""Masking in every process: a real uvicorn server and a real Celery worker and beat, at DEBUG, with canary keys in
their environment, are made to log lines that carry the canaries (access log, django.request, Celery's consumer,
its task tracer and beat). Their captured output shows the lines, masked, and never a canary."""
import os
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.conf import settings
from django.db import transaction

from eneo_site.quickstart import uvicorn_args
from providers.checks.jobs import check_start
from providers.models import ProviderCheck

from .conftest import CANARY, CeleryProcesses, _free_port, _test_database_url, point_celery_at, wait_for
from .factories import make_model, make_provider

SUPER_CANARY = "super-CANARY-3e1b9d7f5a2c4e6a8b0d-qq42"  # no key shape: masked only because it is configured
CANARY_ENV = {"OPENAI_API_KEY": CANARY, "SUPER_API_KEY": SUPER_CANARY, "TEST_LOG_LEVEL": "DEBUG",
              "LITELLM_LOG_LEVEL": "DEBUG"}


def assert_no_canary(text: str, where: str):
    for canary in (CANARY, SUPER_CANARY):
        assert canary not in text, f"{where} shows a canary:\n" + "\n".join(
            line for line in text.splitlines() if canary in line)


# --- uvicorn -------------------------------------------------------------------------------------------------

@pytest.fixture
def uvicorn_server(transactional_db, tmp_path):
    port = _free_port()
    log_path = tmp_path / "uvicorn.log"
    env = {**os.environ, **CANARY_ENV, "DJANGO_SETTINGS_MODULE": "eneo_site.test_settings",
           "DATABASE_URL": _test_database_url(), "DB_POOL": "false", "PYTHONUNBUFFERED": "1"}
    # the command quickstart runs (proxy headers off), with the access log on and at DEBUG
    args = [sys.executable, "-m", "uvicorn", *uvicorn_args("127.0.0.1", port, access_log=True), "--log-level", "debug"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout=60, interval=0.2)

    def stop() -> str:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        return log_path.read_text()

    yield url, stop
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def test_uvicorn_logs_mask_secrets(uvicorn_server):
    url, stop = uvicorn_server
    with httpx.Client(base_url=url, timeout=15) as http:
        assert http.get(f"/api/v1/?key={CANARY}").status_code == 404  # the query string (uvicorn.access)
        assert http.get(f"/api/v1/nothing-{SUPER_CANARY}").status_code == 404  # the path (access, django.request)
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {CANARY}"}).status_code == 401
        assert http.get(f"/api/v1/sysadmin/tenants/{uuid.uuid4()}/credentials",
                        headers={"X-API-Key": CANARY}).status_code == 401
        assert http.get("/healthz", headers={"X-Forwarded-For": "203.0.113.77"}).status_code == 200
    text = stop()
    assert_no_canary(text, "uvicorn's output")
    assert '"GET /api/v1/nothing-...qq42 HTTP/1.1" 404' in text, text  # uvicorn's access log ran, masked
    assert "Not Found: /api/v1/nothing-...qq42" in text, text  # django.request ran, masked
    assert '"GET /v1/models HTTP/1.1" 401' in text and "/credentials HTTP/1.1\" 401" in text
    # proxy headers are off: a client on this host cannot choose its own address (REMOTE_ADDR)
    assert "203.0.113.77" not in text
    assert any("127.0.0.1:" in line and "/healthz" in line for line in text.splitlines())


# --- Celery worker and beat ----------------------------------------------------------------------------------

@pytest.fixture
def celery_logging_processes(redis_url, transactional_db, tmp_path):
    """A worker and a beat of their own, on a Redis database of their own (the session's worker, if any, cannot
    take their tasks), logging at DEBUG into one file."""
    parts = urlsplit(redis_url)
    broker = urlunsplit(parts._replace(path="/13"))
    procs = CeleryProcesses(broker, "")
    procs.log.close()
    procs.log = open(tmp_path / "celery.log", "w")
    procs.env.update(CANARY_ENV)
    procs.env.update({"PYTHONUNBUFFERED": "1"})
    previous = point_celery_at(broker, eager=False, transport_options={"socket_connect_timeout": 2})
    try:
        yield procs, tmp_path / "celery.log"
    finally:
        procs.stop()
        procs.log.close()
        point_celery_at(*previous)


def test_celery_worker_and_beat_logs_mask_secrets(celery_logging_processes):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from eneo_site.celery import app

    procs, log_path = celery_logging_processes
    worker = procs.start("worker", "--pool", "threads", "--concurrency", "2", "--without-gossip", "--without-mingle",
                         "--without-heartbeat", "-n", f"logtest-{os.getpid()}@%h")

    def worker_ready():
        assert worker.poll() is None, log_path.read_text()
        try:
            return bool(app.control.inspect(timeout=1).ping())
        except Exception:  # noqa: BLE001
            return False

    wait_for(worker_ready, timeout=60, interval=0.5)

    # 1. a message nobody knows, carrying the canaries: the consumer logs its whole body (celery.worker)
    app.send_task("eneo.log_canary", args=[CANARY, SUPER_CANARY])
    # 2. a task failing with the canary in its exception: the tracer logs it with a traceback (celery.app.trace)
    app.send_task("providers.tasks.check_run", args=[SUPER_CANARY])
    # 3. a connectivity check with the canary key against a closed port: LiteLLM at DEBUG, retries, failure
    provider = make_provider(name="Canary", base_url=f"http://127.0.0.1:{_free_port()}/v1", api_key=CANARY)
    make_model(provider, model_id="gpt-4o-mini")
    with transaction.atomic():
        check = check_start(kind=ProviderCheck.Kind.TEST, provider=provider)
    # 4. beat: a schedule entry whose name holds a canary (beat logs the names it sends)
    PeriodicTask.objects.update(enabled=False)
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.create(name=f"canary {SUPER_CANARY}", task="eneo.log_canary", interval=every_second,
                                args=f'["{CANARY}"]')
    procs.start("beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
                "--pidfile", "")

    def check_done():
        check.refresh_from_db()
        return check.state == "done"

    wait_for(check_done, timeout=60)
    assert not check.ok
    wanted = ["Received unregistered task of type 'eneo.log_canary'", "raised unexpected", "Sending due task canary"]
    wait_for(lambda: all(w in log_path.read_text() for w in wanted)
             and log_path.read_text().count("Received unregistered task") >= 2, timeout=40)
    time.sleep(0.5)
    procs.stop()
    text = log_path.read_text()
    assert_no_canary(text, "the worker's and beat's output")
    assert "Sending due task canary ...qq42" in text and "...zz91" in text  # the lines are there, masked
    assert "celery.app.trace" in text and "celery.beat" in text  # Celery's loggers go through our handler
