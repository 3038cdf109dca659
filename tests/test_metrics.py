"""/metrics (providers/metrics.py, served by eneo_site.asgi): what the gateway's calls, its breaker, the checks and
the providers' health look like to Prometheus; the token; nothing secret in it. And the latency of connectivity
tests, measured around the upstream call only, with LiteLLM imported when the Celery worker starts.

Live: the official openai client -> our ASGI app (uvicorn) -> LiteLLM -> the fake upstream; /metrics read over HTTP
and parsed with prometheus_client's own parser."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import openai
import pytest
from django.conf import settings as django_settings
from prometheus_client.parser import text_string_to_metric_families

from providers.checks import connectivity
from providers.models import Provider
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.services import tenant_create

from .conftest import CANARY, _test_database_url, openai_client, usage_rows
from .factories import make_model, upstream_provider

PROMPT = "the purple elephant sings quietly at midnight"


def scrape(gateway, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(gateway.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, frozenset of labels): value}"""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, metric: str, **labels) -> float:
    """The sum of the samples named `metric` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == metric and wanted <= ls)


def wait_scrape(gateway, predicate, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(gateway)
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.fixture
def world(gateway, upstream):
    slug = f"metrics-{uuid.uuid4().hex[:8]}"  # the session's metric files hold every test's calls: labels of our own
    tenant = tenant_create(actor=SYSTEM, name=slug.title(), slug=slug)
    provider = upstream_provider(upstream, "openai", api_key=CANARY)
    fast = make_model(provider, model_id="gpt-4o-mini", alias="fast")
    make_model(provider, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"])
    yield {"tenant": slug, "provider": provider, "fast": fast, "key": key.plaintext}
    upstream.clear_faults()


def test_gateway_calls_are_counted_by_tenant_provider_model_and_status(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    labels = {"tenant": world["tenant"], "provider": world["provider"].public_id, "model": "fast"}
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": PROMPT}])
    stream = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": PROMPT}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.embeddings.create(model="embed", input=PROMPT)
    with pytest.raises(openai.NotFoundError):  # refused: a model the tenant does not have
        client.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": PROMPT}])
    upstream.set_fault("status", status=500, times=1)
    with pytest.raises(openai.InternalServerError):  # reached the upstream, which failed
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": PROMPT}])

    text = wait_scrape(gateway, lambda t: value(t, "eneo_gateway_requests_total", tenant=world["tenant"]) >= 5)
    assert value(text, "eneo_gateway_requests_total", **labels, status="ok") == 2
    assert value(text, "eneo_gateway_requests_total", **labels, status="error") == 1
    assert value(text, "eneo_gateway_requests_total", tenant=world["tenant"], model="embed", status="ok") == 1
    assert value(text, "eneo_gateway_requests_total", tenant=world["tenant"], provider="", model="",
                 status="refused") == 1
    assert value(text, "eneo_gateway_refusals_total", tenant=world["tenant"], reason="model_not_found") == 1
    assert value(text, "eneo_gateway_errors_total", **labels, error_type="upstream_error") == 1
    rows = usage_rows(gateway, 5)  # the same tokens as the usage ledger
    ok = [r for r in rows if r.status == "ok" and r.model_id == world["fast"].pk]
    assert len(ok) == 2 and sum(r.tokens_in for r in ok) > 0 and sum(r.tokens_out for r in ok) > 0
    assert value(text, "eneo_gateway_input_tokens_total", **labels, status="ok") == sum(r.tokens_in for r in ok)
    assert value(text, "eneo_gateway_output_tokens_total", **labels, status="ok") == sum(r.tokens_out for r in ok)
    assert value(text, "eneo_gateway_request_duration_seconds_count", **labels, status="ok") == 2
    assert value(text, "eneo_gateway_request_duration_seconds_bucket", **labels, status="ok", le="+Inf") == 2
    assert 0 < value(text, "eneo_gateway_request_duration_seconds_sum", **labels, status="ok") < 10
    assert value(text, "eneo_gateway_time_to_first_token_seconds_count", **labels, status="ok") == 1  # the stream
    # the histogram buckets are cumulative: a fast local call is in the 5 s one too
    assert value(text, "eneo_gateway_request_duration_seconds_bucket", **labels, status="ok", le="5.0") == 2

    # nothing secret in the output: no key, no prompt, no model name a caller typed
    for secret in (CANARY, CANARY[-12:], PROMPT, "purple elephant", "no-such-model-xyz", world["key"]):
        assert secret not in text


def test_cost_is_counted_as_in_the_ledger(gateway, world):
    from providers import services

    services.model_update(actor=SYSTEM, model=world["fast"], input_cost_per_million=1000000,
                          output_cost_per_million=2000000)  # $1 per prompt token, $2 per completion token
    gateway.gw.catalog.invalidate()
    openai_client(gateway, world["key"]).chat.completions.create(model="fast", messages=[{"role": "user",
                                                                                          "content": "hi"}])
    text = wait_scrape(gateway, lambda t: value(t, "eneo_gateway_cost_usd_total", tenant=world["tenant"]) > 0)
    (row,) = usage_rows(gateway)
    assert row.cost > 2
    assert value(text, "eneo_gateway_cost_usd_total", tenant=world["tenant"], model="fast", status="ok") == \
        float(row.cost)


def test_breaker_state_and_openings(gateway, upstream, world, settings):
    # a pause long enough that a loaded machine still makes the paused call within it
    settings.GATEWAY_BREAKER_FAILURES, settings.GATEWAY_BREAKER_SECONDS = 2, 2.0
    gateway.gw.breaker.reset()
    client = openai_client(gateway, world["key"])
    circuit = {"provider": world["provider"].public_id, "tenant": ""}  # shared key: one circuit for everyone
    upstream.set_fault("status", status=500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    text = scrape(gateway)
    assert value(text, "eneo_gateway_breaker_open", **circuit) == 1
    assert value(text, "eneo_gateway_breaker_opened_total", **circuit) == 1
    with pytest.raises(openai.APIStatusError) as refused:  # paused: the gateway answers itself
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503
    time.sleep(2.05)  # half open: the next call goes through, succeeds and closes the circuit
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    text = scrape(gateway)
    assert value(text, "eneo_gateway_breaker_open", **circuit) == 0
    assert value(text, "eneo_gateway_refusals_total", tenant=world["tenant"], reason="provider_paused") == 1
    gateway.gw.breaker.reset()


def test_provider_health_and_check_outcomes(gateway, upstream, world):
    provider = world["provider"]
    before = scrape(gateway)
    outcome = connectivity.provider_test(provider=provider)
    assert outcome.ok
    Provider.objects.filter(pk=provider.pk).update(health_status="degraded")
    text = scrape(gateway)
    assert value(text, "eneo_provider_checks_total", kind="test", ok="true") == \
        value(before, "eneo_provider_checks_total", kind="test", ok="true") + 1
    states = {s: value(text, "eneo_provider_health", provider=provider.public_id, status=s)
              for s in ("healthy", "degraded", "down", "unknown")}
    assert states == {"healthy": 0, "degraded": 1, "down": 0, "unknown": 0}
    assert value(text, "eneo_provider_health", provider=provider.public_id, name=provider.name, tenant="") == 1
    assert 0 <= value(text, "eneo_provider_health_latency_seconds", provider=provider.public_id) < 1


def test_token_method_and_switch(gateway, world, settings):
    url = gateway.url + "/metrics"
    settings.METRICS_TOKEN = "metrics-token-0123456789"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer metrics-token-0123456780"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url, headers={"Authorization": f"Bearer {world['key']}"}).status_code == 401  # a tenant key
    right = httpx.get(url, headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert right.status_code == 200 and "eneo_provider_health" in right.text
    assert "metrics-token" not in right.text
    post = httpx.post(url, headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert post.status_code == 405 and post.headers["allow"] == "GET"
    assert httpx.get(url, headers={"Host": "evil.example"}).status_code == 400
    settings.METRICS_ENABLED = False
    assert httpx.get(url, headers={"Authorization": "Bearer metrics-token-0123456789"}).status_code == 404


def test_record_keeps_counting_when_names_are_unknown(transactional_db):
    """A record whose tenant or model the catalog does not know (yet) is counted under ids, not lost."""
    from decimal import Decimal

    from providers.gateway.usage import usage_row
    from providers.metrics import GatewayMetrics, render

    tenant_id = uuid.uuid4()
    metrics = GatewayMetrics(lambda tenant_id, model_id: None)
    metrics.observe(usage_row(tenant_id, None, "x", "chat.completions", status="ok", http_status=200,
                              request_id="r", tokens_in=3, cost=Decimal("0.5"), latency_ms=20))
    text = render().decode()
    assert value(text, "eneo_gateway_requests_total", tenant=str(tenant_id), provider="", model="") == 1
    assert value(text, "eneo_gateway_cost_usd_total", tenant=str(tenant_id)) == 0.5


# --- connectivity latency -------------------------------------------------------------------------------------

FRESH_TEST = """
import sys, django
django.setup()
assert "litellm" not in sys.modules, "LiteLLM was imported before the test"
from providers.checks import connectivity
from providers.models import Provider
outcome = connectivity.provider_test(provider=Provider.objects.get(pk=int(sys.argv[1])))
assert "litellm" in sys.modules
print("RESULT", outcome.ok, outcome.latency_ms)
"""


def test_connectivity_latency_counts_the_upstream_call_only(transactional_db, upstream):
    """In a fresh process (LiteLLM not imported yet, as in a worker's first task) a test against the fake
    upstream answering at once reports the call's latency, not the ~2 s of importing LiteLLM."""
    upstream.set_latency(0)
    provider = upstream_provider(upstream, "openai")
    make_model(provider, model_id="gpt-4o-mini")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "eneo_site.test_settings", "DATABASE_URL": _test_database_url(),
           "DB_POOL": "false", "TEST_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", FRESH_TEST, str(provider.pk)], cwd=django_settings.BASE_DIR,
                          env=env, capture_output=True, text=True, timeout=120)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and result, done.stderr[-3000:]
    _, ok, latency_ms = result[0].split()
    assert ok == "True" and int(latency_ms) < 1000, result


WORKER_INIT = """
import sys, django
django.setup()
from celery.signals import worker_init, worker_process_init
from eneo_site.celery import import_litellm
assert "providers.llm" not in sys.modules and "litellm" not in sys.modules
import weakref
receivers = [r[1]() if isinstance(r[1], weakref.ReferenceType) else r[1]
             for signal in (worker_init, worker_process_init) for r in signal.receivers]
assert receivers.count(import_litellm) == 2, receivers
import_litellm(sender=None)
assert "providers.llm" in sys.modules and "litellm" in sys.modules
print("IMPORTED")
"""


def test_the_worker_imports_litellm_when_it_starts():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "eneo_site.test_settings", "TEST_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", WORKER_INIT], cwd=django_settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "IMPORTED" in done.stdout, done.stderr[-3000:]
