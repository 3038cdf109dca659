"""Keys go only where their owner configured them, and tenant-controlled endpoints reach only public addresses
(issue 9, findings 2-5). An attacker server on 127.0.0.2 (not in ENDPOINT_ALLOWED_HOSTS) records what reaches it.
The same promises on the real topology (separate uvicorn workers, Celery worker and beat): tests/system."""
import asyncio
import json

import httpx
import openai
import pytest
from django.core.exceptions import ValidationError

from credentials.egress import address_allowed, egress_denied, egress_scope, endpoint_allowed
from credentials.services import credential_set, endpoint_validate
from providers import services
from providers.checks.connectivity import provider_test
from providers.checks.discovery import models_discover
from providers.checks.health import health_check_providers
from providers.models import Provider
from tenants.actors import SYSTEM, Actor
from tenants.api_keys import api_key_create

from .conftest import CANARY, openai_client
from .factories import make_model, make_provider

GLOBAL_CANARY = "sk-GLOBAL-CANARY-3e1f0a9b7c5d-qq42"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.2", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "100.100.100.200", "192.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fd00::1", "fe80::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1", "198.18.0.1",
])
def test_internal_addresses_are_refused_for_tenants(address, settings):
    settings.ENDPOINT_ALLOWED_HOSTS = []
    assert not address_allowed(address)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ValidationError, match="public"):
        endpoint_validate(f"http://{host}:8000/v1")
    assert endpoint_validate(f"http://{host}:8000/v1", tenant_controlled=False)  # a sysadmin may


def test_public_and_allowlisted_addresses_pass(settings):
    settings.ENDPOINT_ALLOWED_HOSTS = ["10.20.0.0/16", "vllm.corp.example", "*.gpu.example.org"]
    assert address_allowed("8.8.8.8") and address_allowed("2606:4700::1111")
    assert address_allowed("10.20.3.4") and not address_allowed("10.21.0.1")
    assert endpoint_allowed("vllm.corp.example") is None and endpoint_allowed("a.gpu.example.org") is None
    assert endpoint_allowed("vllm") and endpoint_allowed("box.internal") and endpoint_allowed("localhost")


# --- connect time: every LiteLLM client family goes through the egress transport --------------------------

FAMILIES = [("openai/gpt-4o-mini", "/v1"), ("hosted_vllm/gpt-4o-mini", "/v1"),
            ("anthropic/claude-3-5-haiku-20241022", ""), ("azure/gpt4o-deploy", "")]


@pytest.mark.parametrize("model, suffix", FAMILIES)
def test_connections_are_checked_on_the_address_for_every_client_family(model, suffix, attacker, upstream):
    from providers.llm import litellm

    async def call(base, tenant_controlled):
        with egress_scope(tenant_controlled=tenant_controlled):
            return await litellm.acompletion(model=model, api_base=base + suffix, api_key="sk-test-key-0000",
                                             api_version="2024-06-01", num_retries=0, max_retries=0,
                                             messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(Exception) as exc:
        asyncio.run(call(attacker.url, True))
    assert egress_denied(exc.value) is not None, exc.value
    assert attacker.requests == []
    assert asyncio.run(call(attacker.url, False)).choices  # an operator's endpoint may be internal
    assert len(attacker.requests) == 1
    assert asyncio.run(call(upstream.url, True)).choices  # allowlisted (test settings: 127.0.0.1)


@pytest.mark.parametrize("model, suffix", FAMILIES)
def test_names_are_checked_on_the_addresses_they_resolve_to(model, suffix, upstream, settings):
    """`localhost` is a name: the check runs on what it resolves to (127.0.0.1, ::1), in the resolver the
    connection then uses."""
    from providers.llm import litellm

    settings.ENDPOINT_ALLOWED_HOSTS = []
    base = upstream.url.replace("127.0.0.1", "localhost") + suffix

    async def call(tenant_controlled):
        with egress_scope(tenant_controlled=tenant_controlled):
            return await litellm.acompletion(model=model, api_base=base, api_key="sk-test-key-0000",
                                             api_version="2024-06-01", num_retries=0, max_retries=0,
                                             messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(Exception) as exc:
        asyncio.run(call(True))
    assert egress_denied(exc.value) is not None, exc.value
    assert "localhost" in str(egress_denied(exc.value)) and upstream.requests == []
    assert asyncio.run(call(False)).choices


def test_sync_clients_are_checked_too(attacker):
    from providers.llm import litellm

    with egress_scope(tenant_controlled=True), pytest.raises(Exception) as exc:
        litellm.completion(model="openai/gpt-4o-mini", api_base=attacker.url + "/v1", api_key="sk-test-key-0000",
                           num_retries=0, max_retries=0, messages=[{"role": "user", "content": "hi"}])
    assert egress_denied(exc.value) is not None and attacker.requests == []


# --- the gateway, tests, discovery and health with tenant-controlled endpoints -----------------------------

@pytest.fixture
def tenant_world(gateway, upstream, attacker, tenant):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["*"]).plaintext
    own = make_provider(tenant=tenant, name="Tenant vLLM", provider_type="openai", base_url=upstream.url + "/v1",
                        api_key=CANARY)
    make_model(own, model_id="gpt-4o-mini", alias="mine")
    return {"key": key, "own": own, "gateway": gateway}


def test_endpoint_changed_behind_the_check_is_refused_at_connect_time(tenant_world, attacker, tenant):
    """A row that passed the save check and now points at an internal address (a DNS answer that changed, an old
    row): every outbound path refuses it at connect time and the attacker sees nothing."""
    own = tenant_world["own"]
    Provider.objects.filter(pk=own.pk).update(base_url=attacker.url + "/v1")
    own.refresh_from_db()
    with pytest.raises(openai.APIStatusError) as exc:
        openai_client_for(tenant_world).chat.completions.create(model="mine", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502 and exc.value.body["code"] == "endpoint_not_allowed"
    assert "127.0.0.2" in exc.value.body["message"] and CANARY not in str(exc.value.body)
    outcome = provider_test(provider=own, tenant=tenant)
    assert not outcome.ok and outcome.message.startswith("Endpoint not allowed"), outcome
    assert "refused by the egress policy" in models_discover(provider=own, actor=SYSTEM)["error"]
    health_check_providers([own.pk])
    own.refresh_from_db()
    assert own.health_status != "healthy" and "Endpoint not allowed" in own.health_error
    assert attacker.requests == []


def openai_client_for(world):
    return openai_client(world["gateway"], world["key"])


def test_redirects_are_never_followed(tenant_world, upstream, attacker, tenant):
    upstream.set_fault("redirect", location=attacker.url, append_path=True)
    with pytest.raises(openai.APIStatusError):
        openai_client_for(tenant_world).chat.completions.create(model="mine", messages=[{"role": "user", "content": "x"}])
    assert not provider_test(provider=tenant_world["own"], tenant=tenant).ok
    assert "redirect" in models_discover(provider=tenant_world["own"], actor=SYSTEM)["error"]
    health_check_providers([tenant_world["own"].pk])
    assert attacker.requests == [] and len(upstream.requests) >= 4


# --- keys are bound to the endpoints configured with them ---------------------------------------------------

@pytest.fixture
def shared_mode(monkeypatch, settings, upstream, attacker):
    """Shared mode with a global OpenAI key bound to the legitimate upstream; the attacker's host is even
    allowlisted, so only the key binding stands between the key and the attacker."""
    settings.TENANT_CREDENTIALS_ENABLED = False
    settings.ENDPOINT_ALLOWED_HOSTS = ["127.0.0.1", "127.0.0.2"]
    monkeypatch.setenv("OPENAI_API_KEY", GLOBAL_CANARY)
    monkeypatch.setenv("OPENAI_API_BASE", upstream.url + "/v1")


def test_tenant_provider_never_gets_the_global_or_an_instance_key(gateway, shared_mode, upstream, attacker, tenant):
    instance = make_provider(tenant=None, instance_wide=True, name="OpenAI", base_url=upstream.url + "/v1",
                             api_key="sk-instance-shared-key-5555")
    make_model(instance, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["*"]).plaintext
    rest = httpx.Client(base_url=gateway.url + "/api/v1", headers={"Authorization": f"Bearer {key}"})
    r = rest.post("/ai-providers", json={"name": "mine", "provider_type": "openai",
                                         "base_url": attacker.url + "/v1", "models": [{"model_id": "gpt-4o"}]})
    assert r.status_code == 201, r.text
    own = Provider.objects.get(public_id=r.json()["id"])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=15)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "credential_missing" and "never sent" in exc.value.body["message"]
    outcome = provider_test(provider=own, tenant=None)  # a sysadmin's test runs on the tenant's behalf
    assert not outcome.ok and "Shared keys" in outcome.message
    health_check_providers([own.pk])
    with pytest.raises(Exception, match="no active key of its own"):
        models_discover(provider=own, actor=SYSTEM)
    assert attacker.requests == []
    # positive control: the shared key still serves the instance-level provider it belongs to
    assert client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}]).choices
    assert upstream.keys_seen() == ["sk-instance-shared-key-5555"]


def test_global_key_goes_only_to_its_own_endpoint(shared_mode, upstream, attacker, tenant):
    bound = make_provider(tenant=None, name="env-bound", base_url=upstream.url + "/v1", api_key=None)
    elsewhere = make_provider(tenant=None, name="elsewhere", base_url=attacker.url + "/v1", api_key=None)
    assert services.provider_credential(provider=bound, tenant=tenant).api_key == GLOBAL_CANARY
    with pytest.raises(Exception, match="only sent to the endpoint configured with it"):
        services.provider_credential(provider=elsewhere, tenant=tenant)
    outcome = provider_test(provider=elsewhere)
    assert not outcome.ok and "OPENAI_API_BASE" in outcome.message and attacker.requests == []


def test_only_sysadmins_move_an_instance_providers_endpoint(db, upstream, attacker):
    p = make_provider(tenant=None, name="shared", base_url=upstream.url + "/v1")
    editor = Actor(name="editor", source="api", user_id=5)
    with pytest.raises(ValidationError, match="Only a sysadmin"):
        services.provider_update(actor=editor, provider=p, base_url=attacker.url + "/v1")
    services.provider_update(actor=editor, provider=p, name="renamed")  # other edits are fine
    services.provider_update(actor=SYSTEM, provider=p, base_url=attacker.url + "/v1")


def test_tenant_credential_endpoint_set_by_a_tenant_admin_follows_the_tenant_rule(settings, tenant, attacker):
    settings.ENDPOINT_ALLOWED_HOSTS = []
    tenant_admin = Actor(name="ta", source="admin", user_id=9)
    with pytest.raises(ValidationError, match="public"):
        credential_set(actor=tenant_admin, tenant=tenant, provider_type="openai", api_key="sk-t-1234567",
                       endpoint=attacker.url + "/v1")
    cred = credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-t-1234567",
                          endpoint=attacker.url + "/v1")
    assert cred.endpoint_approved  # a sysadmin may point a tenant's credential at an internal host
    cred = credential_set(actor=tenant_admin, tenant=tenant, provider_type="openai", api_key="sk-t-7654321",
                          endpoint=attacker.url + "/v1")  # a tenant admin replacing only the key keeps it
    assert cred.endpoint_approved


@pytest.mark.parametrize("field, value", [("api_base", "http://127.0.0.2/v1"), ("base_url", "http://x.example/v1"),
                                          ("extra_headers", {"X": "1"}), ("api_key", "sk-x"),
                                          ("fallbacks", []), ("mock_response", "hi")])
def test_model_and_provider_settings_carry_no_routing_keys(field, value, tenant):
    p = make_provider(tenant=tenant, name="mine")
    with pytest.raises(ValidationError) as exc:
        make_model(p, model_id="gpt-4o", model_config={"temperature": 0.1, field: value})
    assert field in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        services.provider_update(actor=SYSTEM, provider=p, config={field: value})
    assert field in str(exc.value)


def test_stored_routing_keys_of_old_rows_never_reach_a_call(gateway, upstream, attacker, tenant):
    """A model_config saved before the rule (written directly here) is filtered at call time."""
    from credentials import crypto
    from credentials.fields import Sealed
    from providers.models import AIModel

    p = make_provider(tenant=None, instance_wide=True, base_url=upstream.url + "/v1")
    m = make_model(p, model_id="gpt-4o-mini", alias="fast", instance_wide=True)
    AIModel.objects.filter(pk=m.pk).update(model_config=Sealed(crypto.encrypt(json.dumps(
        {"api_base": attacker.url + "/v1", "temperature": 0.3})), is_json=True))
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    assert openai_client(gateway, key).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}]).choices
    assert attacker.requests == [] and upstream.last_request()["json"]["temperature"] == 0.3


# --- no key stays in LiteLLM's client caches ------------------------------------------------------------------

def test_no_key_in_litellm_client_cache(gateway, upstream, tenant):
    from providers.llm import litellm

    oa = make_provider(tenant=None, instance_wide=True, base_url=upstream.url + "/v1", api_key=CANARY)
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    az = make_provider(tenant=None, instance_wide=True, provider_type="azure", base_url=upstream.url,
                       api_version="2024-06-01", api_key=CANARY + "-az")
    make_model(az, model_id="gpt4o-deploy", alias="smart")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    client = openai_client(gateway, key)
    for model in ("fast", "smart"):
        assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}]).choices
    for provider in (oa, az):
        assert provider_test(provider=provider).ok  # connectivity test (sync LiteLLM)
    health_check_providers([oa.pk, az.pk])  # health probes (async LiteLLM)
    assert CANARY in {r["key"] for r in upstream.requests}  # the key did reach its own endpoint
    cached = litellm.in_memory_llm_clients_cache.cache_dict
    assert cached, "LiteLLM cached no client: the test no longer looks at the right place"
    for name, client_obj in cached.items():
        text = f"{name} {getattr(client_obj, 'api_key', '')} {getattr(client_obj, '_custom_headers', '')}"
        assert CANARY not in text, name
