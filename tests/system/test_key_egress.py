"""Credentials go only where they belong (DESIGN.md "Keys stay with their endpoint", "Egress", "Requests").

Black-box, on the real topology (topology.py): a tenant acts over HTTP only, the /v1 gateway with the official
openai client and the REST API with httpx. The servers hold a global OPENAI_API_KEY (`system.canary`) bound to
the legitimate upstream (OPENAI_API_BASE) and a global ANTHROPIC_API_KEY bound to Anthropic's own endpoint. An
attacker listens on 127.0.0.2, an address in ENDPOINT_ALLOWED_HOSTS (so a tenant may save it as its provider's
endpoint), and an outsider on 127.0.0.3, which is not allowlisted. Whatever a tenant does, no shared key and no
request may reach them.
"""
from __future__ import annotations

import json

import openai
import pytest

from tenants.scopes import Scope
from tests.fake_upstream import REPLY

from .topology import (
    assert_openai_error_shape,
    field_errors,
    openai_error,
    requests_carrying,
    summary,
)

HI = [{"role": "user", "content": "hi"}]
PROVIDER_SCOPES = (Scope.LIST, Scope.GET, Scope.CREATE, Scope.UPDATE, Scope.GATEWAY)


def chat(client, model: str, extra_body: dict | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a chat request through the gateway, answered or refused; `extra_body` adds
    fields to its JSON body. Tests look at what reached the fake upstreams first, then at the answer."""
    try:
        answer = client.chat.completions.create(model=model, messages=HI, max_tokens=5, extra_body=extra_body or None)
    except openai.APIStatusError as exc:
        return exc.status_code, openai_error(exc)
    return 200, answer.model_dump()


def assert_no_secret_reached(system, *servers, secrets: tuple[str, ...] = ()) -> None:
    """No request carrying a global key (or one of `secrets`) reached `servers`: key, headers, path or body."""
    for up in servers:
        for secret in (*system.canaries, *secrets):
            leaked = requests_carrying(up, secret)
            assert not leaked, f"{up.url} received the secret ...{secret[-4:]}: {summary(up)}"


def assert_not_contacted(*servers) -> None:
    for up in servers:
        assert up.requests == [], f"{up.url} was contacted: {summary(up)}"


def assert_nothing_reached(system, *servers, secrets: tuple[str, ...] = ()) -> None:
    """No secret, and no request at all, reached `servers`."""
    assert_no_secret_reached(system, *servers, secrets=secrets)
    assert_not_contacted(*servers)


def no_secret_in(text: str, system) -> None:
    for secret in system.canaries:
        assert secret not in text and secret[-8:] not in text


# --- 1. /v1 accepts only the fields of OpenAI's schema --------------------------------------------------------

def _attack_value(field: str, attacker: str):
    return {
        "fallbacks": [{"model": "openai/gpt-4o", "api_base": attacker + "/v1"}],
        "api_base": attacker + "/v1",
        "base_url": attacker + "/v1",
        "extra_headers": {"Authorization": "Bearer sk-injected-0001", "X-Forwarded-Host": "127.0.0.2"},
        "headers": {"Authorization": "Bearer sk-injected-0002"},
        "extra_body": {"api_base": attacker + "/v1"},
        "client": {"base_url": attacker + "/v1"},
        "metadata": {"model_info": {"api_base": attacker + "/v1"}},  # OpenAI's metadata: string values only
        "mock_response": "pwned",
    }[field]


LITELLM_FIELDS = ["fallbacks", "api_base", "base_url", "extra_headers", "headers", "extra_body", "client", "metadata",
                  "mock_response"]


@pytest.mark.parametrize("field", LITELLM_FIELDS)
def test_litellm_only_request_fields_are_refused_by_name(system, field):
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    system.instance_provider(enable_for=(tenant,))
    if field == "fallbacks":  # the primary call fails, so that LiteLLM would go on to the fallback
        system.upstream.set_fault("status", status=500, path_contains="/chat/completions", times=1)
    system.settle()

    status, body = chat(system.openai(key), "gpt-4o-mini", {field: _attack_value(field, system.attacker.url)})

    assert_no_secret_reached(system, system.attacker, system.outsider)
    assert status == 400, body
    error = assert_openai_error_shape(body)
    assert error["type"] == "invalid_request_error" and error["param"] == field, body
    assert field in error["message"], body
    no_secret_in(json.dumps(body), system)
    assert_not_contacted(system.attacker, system.outsider)
    assert system.upstream.requests == [], f"the legitimate upstream was called: {summary(system.upstream)}"


def test_plain_request_reaches_the_bound_endpoint_with_the_global_key(system):
    """Positive control for the test above: the same request without those fields is served."""
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    system.instance_provider(enable_for=(tenant,))
    system.settle()

    answer = system.openai(key).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5,
                                                         metadata={"purpose": "system test"})
    assert answer.choices[0].message.content == REPLY
    assert system.upstream.keys_seen() == [system.canary]
    assert_nothing_reached(system, system.attacker, system.outsider)


# --- 2. shared mode: a tenant's own provider never gets a global key ------------------------------------------

TENANT_MODELS = ("openai/tenant-gpt", "anthropic/tenant-claude")


def _tenant_providers_at_attacker(system):
    """Shared mode. The sysadmin's provider (no key of its own) uses the global OpenAI key at the legitimate
    upstream, where OPENAI_API_BASE binds it. A tenant without credentials of its own creates, over REST, two
    providers whose endpoint is the attacker, each with a model: one of type openai (global key bound by
    OPENAI_API_BASE) and one of type anthropic (global key bound to Anthropic's default endpoint)."""
    tenant = system.tenant()
    key = system.api_key(tenant, *PROVIDER_SCOPES)
    shared = system.instance_provider(enable_for=(tenant,))
    rest = system.rest(key)
    own = []
    for body in ({"name": "Mine", "provider_type": "openai", "base_url": system.attacker.url + "/v1",
                  "models": [{"model_id": "tenant-gpt"}]},
                 {"name": "Mine (Anthropic)", "provider_type": "anthropic", "base_url": system.attacker.url,
                  "models": [{"model_id": "tenant-claude"}]}):
        created = rest.post("/ai-providers", json=body)
        assert created.status_code == 201, created.text  # 127.0.0.2 is in ENDPOINT_ALLOWED_HOSTS
        assert created.json()["keys_count"] == 0
        own.append(created.json())
    system.settle()
    return key, rest, shared, own


def _tenant_model_requests(system) -> list[dict]:
    return [r for r in system.upstream.requests
            if isinstance(r["json"], dict) and r["json"].get("model") in ("tenant-gpt", "tenant-claude")]


def test_gateway_call_to_a_tenant_provider_does_not_use_a_global_key(system):
    key, rest, shared, own = _tenant_providers_at_attacker(system)
    client = system.openai(key)

    answers = {name: chat(client, name) for name in (*TENANT_MODELS, "tenant-gpt")}

    assert_no_secret_reached(system, system.attacker, system.outsider)
    assert _tenant_model_requests(system) == [], "the tenant's model was called with the global key elsewhere"
    for name, (status, body) in answers.items():
        assert 400 <= status < 600, (name, body)
        error = assert_openai_error_shape(body)
        assert error["code"], body
        no_secret_in(json.dumps(body), system)
    # The sysadmin's provider keeps working for the tenant, with the global key at its own endpoint.
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)
    assert answer.choices[0].message.content == REPLY
    assert system.upstream.keys_seen() == [system.canary]
    assert_not_contacted(system.attacker, system.outsider)


@pytest.mark.parametrize("model", TENANT_MODELS)
def test_gateway_refuses_a_tenant_provider_without_credential_as_credential_missing(system, model):
    """The expected refusal: 403 credential_missing (shared keys are offered only to the endpoint a sysadmin
    configured them with)."""
    key, rest, shared, own = _tenant_providers_at_attacker(system)
    status, body = chat(system.openai(key), model)

    assert_no_secret_reached(system, system.attacker)
    assert status == 403, body
    error = assert_openai_error_shape(body)
    assert error["code"] == "credential_missing", body
    assert_not_contacted(system.attacker)


def test_connection_test_of_a_tenant_provider_does_not_use_a_global_key(system):
    key, rest, shared, own = _tenant_providers_at_attacker(system)

    tasks = system.wait_tasks(rest, [system.post_check(rest, f"/ai-providers/{p['id']}/test") for p in own])

    assert_no_secret_reached(system, system.attacker, system.outsider)
    assert system.upstream.requests == [], f"tested elsewhere with the global key: {summary(system.upstream)}"
    for task in tasks:
        assert task["ok"] is False and task["message"].strip(), task
        no_secret_in(json.dumps(task), system)
    assert_not_contacted(system.attacker, system.outsider)


def test_discovery_of_a_tenant_provider_does_not_use_a_global_key(system):
    key, rest, shared, own = _tenant_providers_at_attacker(system)

    tasks = system.wait_tasks(rest, [system.post_check(rest, f"/ai-providers/{p['id']}/discover") for p in own])

    assert_no_secret_reached(system, system.attacker, system.outsider)
    assert system.upstream.requests == [], f"listed elsewhere with the global key: {summary(system.upstream)}"
    for task, provider in zip(tasks, own):
        assert task["ok"] is False and task["message"].strip(), task
        no_secret_in(json.dumps(task), system)
        models = rest.get(f"/ai-providers/{provider['id']}/models").json()["items"]
        assert len(models) == 1, f"models were discovered with a global key: {[m['model_id'] for m in models]}"
    assert_not_contacted(system.attacker, system.outsider)


def test_scheduled_health_checks_do_not_send_a_global_key_to_a_tenant_endpoint(system):
    from providers.models import ProviderCheck

    key, rest, shared, own = _tenant_providers_at_attacker(system)

    # Beat's schedule fans out every active provider in one batch: two runs for the sysadmin's provider are two
    # runs for the tenant's providers too (whether or not they get check rows of their own).
    system.run_health_checks(watch=[shared], runs=2)

    assert_no_secret_reached(system, system.attacker, system.outsider)
    shared.refresh_from_db()
    assert shared.health_status == "healthy", shared.health_error  # positive control
    assert system.canary in system.upstream.keys_seen()
    own_checks = list(ProviderCheck.objects.filter(provider__public_id__in=[p["id"] for p in own],
                                                   kind=ProviderCheck.Kind.HEALTH))
    assert all(not c.ok for c in own_checks), [(c.provider.name, c.status, c.message) for c in own_checks]
    no_secret_in(json.dumps([c.message for c in own_checks]), system)
    assert system.anthropic_canary not in system.upstream.keys_seen()
    assert_nothing_reached(system, system.attacker, system.outsider)


# --- 3. a model's stored settings cannot route or authenticate -------------------------------------------------

ROUTING_SETTINGS = ["api_base", "base_url", "api_key", "extra_headers"]


def _routing_value(name: str, attacker: str):
    return {"api_base": attacker + "/v1", "base_url": attacker + "/v1", "api_key": "sk-injected-0003",
            "extra_headers": {"Authorization": "Bearer sk-injected-0004"}}[name]


def _names(response, name: str) -> bool:
    return response.status_code == 422 and name in json.dumps(response.json().get("detail"))


@pytest.mark.parametrize("name", ROUTING_SETTINGS)
def test_model_config_cannot_set_routing_or_auth(system, name):
    tenant = system.tenant()
    key = system.api_key(tenant, *PROVIDER_SCOPES)
    rest = system.rest(key)
    own_key = "sk-TENANTOWN-" + "a" * 20
    created = rest.post("/ai-providers", json={
        "name": "Mine", "provider_type": "openai", "base_url": system.upstream.url + "/v1", "api_key": own_key,
        "models": [{"model_id": "tenant-gpt"}]})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    model_pk = rest.get(f"/ai-providers/{pid}/models").json()["items"][0]["id"]
    config = {name: _routing_value(name, system.attacker.url)}

    added = rest.post(f"/ai-providers/{pid}/models", json={"model_id": "evil", "model_config": config})
    patched = rest.patch(f"/ai-providers/{pid}/models/{model_pk}", json={"model_config": config})
    with_provider = rest.post("/ai-providers", json={
        "name": "Mine too", "provider_type": "openai", "base_url": system.upstream.url + "/v1", "api_key": own_key,
        "models": [{"model_id": "evil", "model_config": config}]})
    # Whatever was stored, calls go to the provider's endpoint with its own key only.
    system.settle()
    client = system.openai(key)
    for model in ("tenant-gpt", "evil"):
        chat(client, model)

    assert_no_secret_reached(system, system.attacker, system.outsider, secrets=(own_key,))
    assert set(system.upstream.keys_seen()) <= {own_key}
    assert _names(added, name), (added.status_code, added.text)
    assert _names(patched, name), (patched.status_code, patched.text)
    assert _names(with_provider, name), (with_provider.status_code, with_provider.text)
    assert_not_contacted(system.attacker, system.outsider)


# --- 4. egress: tenant endpoints reach only public addresses or ENDPOINT_ALLOWED_HOSTS -------------------------

INTERNAL_ENDPOINTS = ["outsider", "http://10.0.0.1/v1", "http://169.254.169.254/", "http://100.100.100.200/",
                      "http://192.0.0.1/"]


@pytest.mark.parametrize("endpoint", INTERNAL_ENDPOINTS)
def test_internal_endpoint_is_refused_on_save(system, endpoint):
    endpoint = system.outsider.url + "/v1" if endpoint == "outsider" else endpoint
    tenant = system.tenant()
    rest = system.rest(system.api_key(tenant, *PROVIDER_SCOPES))

    created = rest.post("/ai-providers", json={"name": "Internal", "provider_type": "openai", "base_url": endpoint,
                                               "api_key": "sk-TENANTOWN-" + "b" * 20})
    assert created.status_code == 422, created.text
    assert "base_url" in field_errors(created), created.text

    ok = rest.post("/ai-providers", json={"name": "Public", "provider_type": "openai",
                                          "base_url": system.attacker.url + "/v1"})
    assert ok.status_code == 201, ok.text
    patched = rest.patch(f"/ai-providers/{ok.json()['id']}", json={"base_url": endpoint})
    assert patched.status_code == 422, patched.text
    assert "base_url" in field_errors(patched), patched.text
    assert_nothing_reached(system, system.attacker, system.outsider)


def _tenant_provider_moved_to_outsider(system):
    """A tenant's provider saved at an allowed address whose row now points at one that is not (as if its DNS
    name had changed after the save): written straight to the database, past validation."""
    from providers.models import Provider

    tenant = system.tenant()
    key = system.api_key(tenant, *PROVIDER_SCOPES)
    own_key = "sk-TENANTOWN-" + "c" * 20
    provider = system.tenant_provider(tenant, base_url=system.upstream.url + "/v1", api_key=own_key)
    Provider.objects.filter(pk=provider.pk).update(base_url=system.outsider.url + "/v1")
    system.settle()
    return key, own_key, provider


def test_endpoint_is_checked_again_when_connecting(system):
    key, own_key, provider = _tenant_provider_moved_to_outsider(system)

    status, body = chat(system.openai(key), "openai/tenant-gpt")

    assert_no_secret_reached(system, system.outsider, secrets=(own_key,))
    assert status == 502, body
    error = assert_openai_error_shape(body)
    assert "endpoint" in (error["code"] or "") or "egress" in (error["code"] or ""), body
    no_secret_in(json.dumps(body), system)
    assert_not_contacted(system.outsider, system.upstream)


def test_connection_test_and_discovery_check_the_endpoint_when_connecting(system):
    key, own_key, provider = _tenant_provider_moved_to_outsider(system)
    rest = system.rest(key)

    tested, discovered = system.wait_tasks(rest, [system.post_check(rest, f"/ai-providers/{provider.public_id}/{check}")
                                                  for check in ("test", "discover")])
    assert_no_secret_reached(system, system.outsider, secrets=(own_key,))
    assert tested["ok"] is False and tested["message"].strip(), tested
    assert discovered["ok"] is False and discovered["message"].strip(), discovered
    assert_not_contacted(system.outsider)


# --- 5. redirects are not followed ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["attacker", "outsider"])
def test_redirect_from_an_allowed_endpoint_is_not_followed(system, target):
    to = getattr(system, target)
    tenant = system.tenant()
    key = system.api_key(tenant, *PROVIDER_SCOPES)
    own_key = "sk-TENANTOWN-" + "d" * 20
    rest = system.rest(key)
    created = rest.post("/ai-providers", json={
        "name": "Mine", "provider_type": "openai", "base_url": system.upstream.url + "/v1", "api_key": own_key,
        "models": [{"model_id": "tenant-gpt"}]})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    system.upstream.set_fault("redirect", location=to.url, append_path=True)  # every route, 307
    system.settle()

    status, body = chat(system.openai(key), "tenant-gpt")
    tested, discovered = system.wait_tasks(rest, [system.post_check(rest, f"/ai-providers/{pid}/{check}")
                                                  for check in ("test", "discover")])

    assert_no_secret_reached(system, to, secrets=(own_key,))
    assert system.upstream.requests, "the allowed endpoint was not even asked"
    assert status >= 400, body
    assert_openai_error_shape(body)
    assert tested["ok"] is False, tested
    assert discovered["ok"] is False, discovered
    assert_not_contacted(to)
