"""One tenant cannot pause a shared provider for the others (issue 9, finding 4): the circuit breaker counts only
provider faults, and a tenant's own credential has a circuit of its own."""
import json

import httpx
import pytest

from credentials.services import credential_set
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .factories import make_model, make_provider

A_KEY = "sk-tenant-a-own-key-1111"


@pytest.fixture
def two_tenants(gateway, upstream, tenant, other_tenant, settings):
    gateway.gw.breaker.reset()
    settings.GATEWAY_BREAKER_FAILURES, settings.GATEWAY_BREAKER_SECONDS = 2, 60
    shared = make_provider(tenant=None, instance_wide=True, base_url=upstream.url + "/v1",
                           api_key="sk-shared-instance-key-2222")
    make_model(shared, model_id="gpt-4o-mini", alias="fast")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key=A_KEY)
    a = api_key_create(actor=SYSTEM, tenant=tenant, name="a", scopes=["gateway:Use"]).plaintext
    b = api_key_create(actor=SYSTEM, tenant=other_tenant, name="b", scopes=["gateway:Use"]).plaintext
    yield {"a": a, "b": b}
    gateway.gw.breaker.reset()


def chat(gateway, key, **extra):
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", content=json.dumps(body).encode(), timeout=15,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


@pytest.mark.parametrize("fault", [{"status": 401}, {"status": 403}, {"status": 400}, {"status": 404},
                                   {"status": 429}])
def test_a_tenants_rejected_credential_or_request_pauses_nobody(gateway, upstream, two_tenants, fault):
    upstream.set_fault("status", key=A_KEY, **fault)
    for _ in range(5):
        assert chat(gateway, two_tenants["a"]).status_code in (400, 429, 502)
    r = chat(gateway, two_tenants["b"])
    assert r.status_code == 200, r.text


def test_client_caused_errors_pause_nobody(gateway, upstream, two_tenants):
    for _ in range(3):
        for bad in ({"messages": [{"role": "user", "content": "\ud800"}]}, {"stream": True, "stream_options": "x"},
                    {"stream": True, "stream_options": {"include_usage": 5}}, {"temperature": "hot"}):
            assert chat(gateway, two_tenants["a"], **bad).status_code == 400
            assert chat(gateway, two_tenants["b"], **bad).status_code == 400
    assert chat(gateway, two_tenants["b"]).status_code == 200
    assert chat(gateway, two_tenants["a"]).status_code == 200


def test_provider_faults_pause_the_shared_key_but_not_a_tenants_own(gateway, upstream, two_tenants):
    upstream.set_fault("status", status=500, key="sk-shared-instance-key-2222")
    for _ in range(2):
        assert chat(gateway, two_tenants["b"]).status_code == 502
    r = chat(gateway, two_tenants["b"])
    assert r.status_code == 503 and r.json()["error"]["code"] == "provider_paused"
    assert chat(gateway, two_tenants["a"]).status_code == 200  # tenant A calls with its own key: its own circuit
