"""/metrics across processes (prometheus-client's multiprocess mode, providers/metrics.py): the topology's web
server (uvicorn, two workers), a second uvicorn process started here with the same PROMETHEUS_MULTIPROC_DIR, and
the Celery worker all write their metrics there, and one scrape of any of them shows everything."""
from __future__ import annotations

import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenants.scopes import Scope

from .topology import Service, _free_port

HI = [{"role": "user", "content": "hi there"}]


def value(text: str, metric: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == metric and wanted <= set(s.labels.items()))


@pytest.fixture
def second_web(system):
    """Another uvicorn process (one worker) beside the topology's, with its environment."""
    port = _free_port()
    service = Service("web-2", [sys.executable, "-m", "uvicorn", "eneo_site.asgi:application", "--host", "127.0.0.1",
                                "--port", str(port), "--no-access-log", "--lifespan", "off"], system.env(),
                      system.log_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert service.running, service.tail()
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 401:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, service.tail()
        time.sleep(0.1)
    yield url
    service.terminate()
    service.stop()


def test_one_scrape_adds_up_every_process(system, second_web):
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY, Scope.LIST, Scope.GET, Scope.UPDATE)
    system.instance_provider(enable_for=(tenant,))
    system.settle()
    own = system.tenant_provider(tenant, base_url=system.upstream.url + "/v1", api_key="sk-TENANTOWN-" + "c" * 20)
    headers = {"Authorization": f"Bearer {key}"}
    calls = {system.url: 6, second_web: 4}
    for url, n in calls.items():
        for _ in range(n):  # a connection each: the topology's two workers both get some
            r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=20,
                           json={"model": "gpt-4o-mini", "messages": HI})
            assert r.status_code == 200, r.text
    before = httpx.get(system.url + "/metrics", timeout=10).text
    rest = system.rest(key)
    check = system.start_check(rest, f"/ai-providers/{own.public_id}/test")  # run by the Celery worker
    assert check["ok"], check

    total = sum(calls.values())
    for url in (system.url, second_web, system.url, system.url):  # whichever worker answers
        text = httpx.get(url + "/metrics", timeout=10).text
        assert value(text, "eneo_gateway_requests_total", tenant=tenant.slug, status="ok") == total
        assert value(text, "eneo_gateway_request_duration_seconds_count", tenant=tenant.slug) == total
        assert value(text, "eneo_provider_checks_total", kind="test", ok="true") == \
            value(before, "eneo_provider_checks_total", kind="test", ok="true") + 1
        assert value(text, "eneo_provider_health", provider=own.public_id, status="unknown") == 1  # a tenant's test
        # (run with its own credential resolution) leaves the provider's health as it is
