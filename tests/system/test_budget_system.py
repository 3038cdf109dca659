"""A tenant's monthly budget on the real topology, across worker processes (topology.py): the topology's uvicorn
(two workers) and one more uvicorn process of its own here share the month's spend through Redis, so once the
budget is spent through one, the other refuses the next call at once, although it read the spend before (per
process, it would go on for up to a minute)."""
from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from providers import services
from tenants.actors import SYSTEM
from tenants.scopes import Scope
from tenants.services import tenant_update

from .topology import STARTUP_TIMEOUT, Service

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def second_web(topology):
    """Another gateway process (one uvicorn worker) with the topology's settings: the same database and Redis."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = Service("web-budget", [sys.executable, "-m", "uvicorn", "eneo_site.asgi:application", "--host",
                                     "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
                                     "--lifespan", "off", "--log-level", "info"], topology.env(), topology.log_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            assert service.running, f"the second web process exited\n{service.tail()}"
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the second web process did not start\n{service.tail()}"
            time.sleep(0.1)
        yield url
    finally:
        service.stop()


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                      json={"model": "gpt-4o-mini", "messages": HI})


def test_budget_spent_through_one_worker_is_refused_by_another_at_once(system, second_web):
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    provider = system.instance_provider(name="Priced", enable_for=(tenant,))
    services.model_update(actor=SYSTEM, model=provider.models.get(), input_cost_per_million=Decimal("1000000"),
                          output_cost_per_million=Decimal("0"))  # every prompt token costs 1
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("20"))
    system.settle()

    r = _chat(second_web, key)  # the second process reads the month's spend first
    assert r.status_code == 200, r.text
    per_call = Decimal(r.headers["x-eneo-budget-limit"]) - Decimal(r.headers["x-eneo-budget-remaining"])
    assert per_call > 0
    spent = per_call
    while spent < 20:  # the rest of the budget through the topology's workers
        r = _chat(system.url, key)
        assert r.status_code == 200, r.text
        spent += per_call
        assert Decimal(r.headers["x-eneo-budget-remaining"]) == max(20 - spent, 0)
    refused = _chat(second_web, key)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "budget" in error["message"]
    assert _chat(system.url, key).status_code == 429
