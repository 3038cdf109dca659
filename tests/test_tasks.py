"""Celery: connectivity tests, validation, discovery and scheduled health checks on a real worker (Redis) and
beat, against the fake upstream. Plus the health-check runner's time bound and the broker-down fallback."""
import time

from django.utils import timezone

from providers.checks.jobs import check_start
from providers.checks.health import health_check_providers
from providers.models import AIModel, Provider, ProviderCheck
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import CANARY, _free_port, point_celery_at, wait_for
from .factories import make_model, make_provider


def finished(check):
    def done():
        check.refresh_from_db()
        return check.state == "done" and check
    return wait_for(done, timeout=30)


def start(kind, provider, model=None):
    from django.db import transaction

    with transaction.atomic():
        check = check_start(kind=kind, provider=provider, model=model)
    return check


def test_connectivity_test_ok_and_401_without_retry(worker, upstream):
    p = make_provider(name="Up", base_url=upstream.url + "/v1", api_key="sk-worker-test-0001")
    make_model(p, model_id="gpt-4o-mini")
    check = finished(start("test", p))
    assert check.ok and check.message == "Connection OK (gpt-4o-mini)" and check.latency_ms is not None
    p.refresh_from_db()
    assert p.health_status == "healthy" and upstream.keys_seen() == ["sk-worker-test-0001"]

    upstream.set_fault("status", status=401)
    check = finished(start("test", p))
    assert not check.ok and check.message == "Invalid API key" and check.details["attempt"] == 1  # no retry
    assert len(upstream.requests) == 2
    p.refresh_from_db()
    assert p.health_status == "down" and p.health_error == "Invalid API key"


def test_transient_failure_is_retried_with_backoff(worker, upstream):
    p = make_provider(name="Flaky", base_url=upstream.url + "/v1", api_key="sk-worker-test-0002")
    make_model(p, model_id="gpt-4o-mini")
    upstream.set_fault("status", status=503, times=1)
    check = finished(start("test", p))
    assert check.ok and check.details["attempt"] == 2


def test_timeout_and_validate(worker, upstream):
    p = make_provider(name="Slow", base_url=upstream.url + "/v1", api_key="sk-worker-test-0003")
    chat = make_model(p, model_id="gpt-4o-mini")
    embed = make_model(p, model_id="text-embedding-3-small", model_type="embedding")
    check = finished(start("validate", p, embed))
    assert check.ok and upstream.last_request()["path"] == "/v1/embeddings"
    upstream.set_fault("timeout", seconds=5)
    check = finished(start("validate", p, chat))
    assert not check.ok and check.message.startswith("Could not connect to the API")
    assert check.details["attempt"] == 4  # retried 3 times: a timeout is transient


def test_discovery_adds_inactive_and_marks_vanished(worker, upstream):
    upstream.set_models(["model-a", "model-b"])
    p = make_provider(name="vLLM", provider_type="hosted_vllm", base_url=upstream.url + "/v1", api_key="vllm-k-0004")
    make_model(p, model_id="model-a")
    make_model(p, model_id="retired")
    check = finished(start("discover", p))
    assert check.ok and check.details["added"] == ["model-b"] and check.details["vanished"] == ["retired"]
    assert AIModel.objects.get(provider=p, model_id="model-b").status == "inactive"
    assert AIModel.objects.get(provider=p, model_id="retired").vanished_at is not None  # marked, not deleted
    assert upstream.last_request()["path"] == "/v1/models"  # a base ending in /v1 gets no second /v1
    upstream.set_models(["model-a", "model-b", "retired"])
    check = finished(start("discover", p))
    assert check.details["reappeared"] == ["retired"]
    assert AIModel.objects.get(provider=p, model_id="retired").vanished_at is None


def test_rest_test_endpoint_returns_task_and_status(worker, upstream, tenant, client):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="ops",
                         scopes=["aiProviders:UpdateAiProvider", "aiProviders:GetAiProvider"]).plaintext
    p = make_provider(tenant=tenant, name="Own", base_url=upstream.url + "/v1", api_key=CANARY)
    make_model(p, model_id="gpt-4o-mini")
    h = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    r = client.post(f"/api/v1/ai-providers/{p.public_id}/test", **h)
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running", "done")
    url = r.json()["status_url"]
    body = wait_for(lambda: (b := client.get(url, **h).json())["state"] == "done" and b)
    assert body["ok"] is True and CANARY not in str(body)
    r = client.post(f"/api/v1/ai-providers/{p.public_id}/discover", **h)
    assert r.status_code == 202
    other = api_key_create(actor=SYSTEM, tenant=make_tenant("elsewhere"), name="x", scopes=["*"]).plaintext
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 404
    assert client.post(f"/api/v1/ai-providers/{p.public_id}/test",
                       HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 404


def make_tenant(slug):
    from tenants.services import tenant_create

    return tenant_create(actor=SYSTEM, name=slug.title(), slug=slug)


def test_beat_runs_scheduled_health_checks(worker, upstream):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    p = make_provider(name="Watched", base_url=upstream.url + "/v1", api_key="sk-beat-0005")
    dead = make_provider(name="Dead", base_url=f"http://127.0.0.1:{_free_port()}/v1", api_key="sk-beat-0006")
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.update(enabled=False)
    PeriodicTask.objects.create(name="test health", task="providers.tasks.health_checks_run", interval=every_second)
    beat = worker.start("beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
                        "--pidfile", "")
    try:
        wait_for(lambda: Provider.objects.get(pk=p.pk).health_checked_at is not None, timeout=40)
        assert Provider.objects.get(pk=p.pk).health_status == "healthy"
        wait_for(lambda: Provider.objects.get(pk=dead.pk).health_status == "down", timeout=40)  # 2 failures in a row
        assert ProviderCheck.objects.filter(provider=p, kind="health").exists()
    finally:  # this beat must not go on scheduling health checks into later tests
        from eneo_site.celery import app

        beat.terminate()
        beat.wait(10)
        worker.procs.remove(beat)
        app.control.purge()
        time.sleep(2)  # batches already taken by the worker finish (probes time out after 1.5 s)


def test_one_dead_or_slow_provider_does_not_delay_the_others(db, upstream, settings):
    settings.HEALTH_CHECK_TIMEOUT = 1.0
    healthy = [make_provider(name=f"ok-{i}", base_url=upstream.url + "/v1", api_key=f"sk-ok-{i:04d}")
               for i in range(30)]
    slow = make_provider(name="slow", base_url=upstream.url + "/v1", api_key="sk-slow-0000")
    dead = make_provider(name="dead", base_url=f"http://127.0.0.1:{_free_port()}/v1", api_key="sk-dead-0000")
    nokey = make_provider(name="nokey", provider_type="anthropic", base_url=upstream.url, api_key=None)
    upstream.set_fault("timeout", seconds=10, key="sk-slow-0000")
    started = time.monotonic()
    counts = health_check_providers([p.pk for p in [*healthy, slow, dead, nokey]])
    elapsed = time.monotonic() - started
    assert elapsed < 4.0, elapsed  # bounded by the per-provider timeout, not the number of providers
    statuses = {p.name: (p.health_status, p.health_error) for p in Provider.objects.filter(name__in=["slow", "dead", "nokey"])}
    assert counts["healthy"] == 30 and counts["degraded"] == 2 and counts["unknown"] == 1, (counts, statuses)
    slow.refresh_from_db()
    assert slow.health_error.startswith("Could not connect") and slow.health_checked_at <= timezone.now()


def test_broker_down_runs_checks_inline(db, upstream, settings, client, tenant, django_capture_on_commit_callbacks):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="ops", scopes=["*"]).plaintext
    p = make_provider(tenant=tenant, name="Own", base_url=upstream.url + "/v1", api_key="sk-inline-0007")
    make_model(p, model_id="gpt-4o-mini")
    previous = point_celery_at(f"redis://127.0.0.1:{_free_port()}/0", eager=False,
                               transport_options={"socket_connect_timeout": 1, "max_retries": 0})
    try:
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            r = client.post(f"/api/v1/ai-providers/{p.public_id}/test", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert r.status_code == 202 and time.monotonic() - started < 10
    finally:
        point_celery_at(*previous)
    check = ProviderCheck.objects.get(provider=p)
    assert check.state == "done" and check.ok and "ran_inline" in check.details


def test_health_probe_by_completion_where_the_server_lists_no_models(db, upstream, settings):
    """Azure has no model list: its health probe is the smallest real call through LiteLLM."""
    settings.HEALTH_CHECK_TIMEOUT = 2.0
    azure = make_provider(name="az", provider_type="azure", base_url=upstream.url, api_version="2024-06-01",
                          api_key="az-health-0001")
    make_model(azure, model_id="gpt4o-deploy")
    no_model = make_provider(name="az-empty", provider_type="azure", base_url=upstream.url,
                             api_version="2024-06-01", api_key="az-health-0002")
    counts = health_check_providers([azure.pk, no_model.pk])
    assert counts == {"healthy": 1, "unknown": 1}
    request = upstream.last_request()
    assert request["path"] == "/openai/deployments/gpt4o-deploy/chat/completions"
    assert request["json"]["max_tokens"] == 1 and upstream.keys_seen() == ["az-health-0001"]
