"""A provider type's settings (from LiteLLM's field catalog) reach every call, and only where they belong.

Against the fake upstream: Bedrock's Converse API signed with the configured key id and region, a tenant's Azure
deployment, an OpenAI setting as its header; for Vertex AI (no fake can answer Google's token exchange) what
LiteLLM receives. And the rules: no environment references, no server identity for tenants, a tenant's call
never carries the operator's secret settings.
"""
import json

import openai
import pytest
from django.core.exceptions import ValidationError

from credentials.services import credential_set
from providers import services
from tenants.actors import SYSTEM, Actor
from tenants.api_keys import api_key_create

from .conftest import openai_client
from .factories import make_model, make_provider, upstream_provider

AWS_SECRET = "aws-secret-canary-3f9c2a7d1e"
TENANT_AWS_SECRET = "aws-tenant-secret-canary-8b1d"
ASK = [{"role": "user", "content": "hello"}]


@pytest.fixture
def client_of(gateway, tenant):
    return openai_client(gateway, api_key_create(actor=SYSTEM, tenant=tenant, name="bot",
                                                 scopes=["gateway:Use"]).plaintext)


def _bedrock(upstream, **config):
    p = make_provider(tenant=None, instance_wide=True, name="Bedrock", provider_type="bedrock", api_key=None,
                      base_url=upstream.url, config={"aws_region_name": "eu-north-1",
                                                     "aws_access_key_id": "AKIAOPERATOR0001",
                                                     "aws_secret_access_key": AWS_SECRET, **config})
    make_model(p, model_id="anthropic.claude-3-haiku-20240307-v1:0", alias="claude-haiku", instance_wide=True)
    return p


def _converse(upstream):
    calls = [r for r in upstream.requests if r["path"].endswith("/converse")]
    assert calls, [r["path"] for r in upstream.requests]
    return calls[-1]


def test_bedrock_converse_is_signed_with_the_configured_key_id_and_region(client_of, upstream, all_logs):
    _bedrock(upstream)
    answer = client_of.chat.completions.create(model="claude-haiku", messages=ASK)
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    call = _converse(upstream)
    assert call["path"] == "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
    scope = call["headers"]["authorization"].split("Credential=")[1].split(",")[0].split("/")
    assert scope[0] == "AKIAOPERATOR0001" and scope[2:] == ["eu-north-1", "bedrock", "aws4_request"]
    assert AWS_SECRET not in json.dumps(upstream.requests)  # a signature, never the secret itself
    assert not any(AWS_SECRET in line for line in all_logs["raw"])


def test_a_tenant_credential_signs_with_its_own_key_and_region_never_the_operators(client_of, upstream, tenant):
    _bedrock(upstream)
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="bedrock", api_key="", extra={
        "aws_region_name": "eu-west-1", "aws_access_key_id": "AKIATENANT000001",
        "aws_secret_access_key": TENANT_AWS_SECRET})
    client_of.chat.completions.create(model="claude-haiku", messages=ASK)
    scope = _converse(upstream)["headers"]["authorization"].split("Credential=")[1].split("/")
    assert scope[0] == "AKIATENANT000001" and scope[2] == "eu-west-1"


def test_a_tenant_credential_without_its_own_aws_keys_is_refused_not_the_servers_identity(tenant):
    with pytest.raises(ValidationError) as exc:
        credential_set(actor=SYSTEM, tenant=tenant, provider_type="bedrock", api_key="",
                       extra={"aws_region_name": "eu-west-1"})
    assert "aws_access_key_id + aws_secret_access_key" in str(exc.value)
    with pytest.raises(ValidationError) as exc:  # a sysadmin neither: the tenant's calls never run as the server
        credential_set(actor=SYSTEM, tenant=tenant, provider_type="bedrock", api_key="",
                       extra={"aws_region_name": "eu-west-1", "aws_profile_name": "prod"})
    assert "extra.aws_profile_name" in exc.value.message_dict


def test_a_tenants_own_bedrock_provider_needs_its_own_keys(client_of, upstream, tenant, settings):
    settings.ENDPOINT_ALLOWED_HOSTS = ["127.0.0.1"]
    p = make_provider(tenant=tenant, name="Ours", provider_type="bedrock", api_key=None, base_url=upstream.url,
                      config={"aws_region_name": "eu-north-1"})
    make_model(p, model_id="anthropic.claude-3-haiku-20240307-v1:0", alias="ours")
    with pytest.raises(openai.APIStatusError) as exc:
        client_of.chat.completions.create(model="ours", messages=ASK)
    assert exc.value.status_code in (401, 403, 424, 502, 503) and "no active key" in str(exc.value)
    assert upstream.requests == []
    with pytest.raises(ValidationError) as err:
        services.provider_update(actor=SYSTEM, provider=p, config={"aws_region_name": "eu-north-1",
                                                                   "aws_role_name": "admin"})
    assert "config.aws_role_name" in err.value.message_dict


def test_a_tenants_azure_credential_routes_to_its_deployment(client_of, upstream, tenant):
    p = upstream_provider(upstream, "azure")
    make_model(p, model_id="gpt4o-shared", alias="smart", instance_wide=True)
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="azure", api_key="tenant-azure-key-0009",
                   endpoint=upstream.url, api_version="2024-10-21", deployment_name="tenant-gpt4o")
    assert client_of.chat.completions.create(model="smart", messages=ASK).model == "smart"
    call = upstream.last_request()
    assert call["path"] == "/openai/deployments/tenant-gpt4o/chat/completions"
    assert call["query"]["api-version"] == "2024-10-21" and call["key"] == "tenant-azure-key-0009"


def test_an_openai_setting_reaches_the_call(client_of, upstream):
    p = upstream_provider(upstream, "openai", config={"organization": "org-eneo-42"})
    make_model(p, model_id="gpt-4o-mini", alias="fast", instance_wide=True)
    client_of.chat.completions.create(model="fast", messages=ASK)
    assert upstream.last_request()["headers"]["openai-organization"] == "org-eneo-42"
    # ... and every other call path: test connection, model validation, discovery, health
    from providers.checks.connectivity import model_validate, provider_test
    from providers.checks.discovery import models_discover
    from providers.checks.health import health_check_providers

    upstream.reset()
    assert provider_test(provider=p).ok and model_validate(model=p.models.get()).ok
    assert models_discover(provider=p, actor=SYSTEM)["ok"]
    health_check_providers([p.pk])
    paths = [(r["path"], r["headers"].get("openai-organization")) for r in upstream.requests]
    assert {path for path, _ in paths} == {"/v1/chat/completions", "/v1/models"} and len(paths) >= 4
    assert all(org == "org-eneo-42" for _, org in paths), paths


def test_vertex_ai_gets_project_location_and_the_service_account(client_of, upstream, monkeypatch):
    """Google's token exchange cannot be faked on 127.0.0.1: what LiteLLM receives is checked at the point where
    it would fetch the token, and the request that follows goes to the provider's base URL."""
    from litellm.llms.vertex_ai.vertex_llm_base import VertexBase

    seen = []

    async def token(self, credentials, project_id):
        seen.append((credentials, project_id))
        return "ya29.fake-token", project_id

    monkeypatch.setattr(VertexBase, "get_access_token_async", token)
    account = {"type": "service_account", "project_id": "eneo-prod", "private_key_id": "k1",
               "client_email": "gw@eneo-prod.iam.gserviceaccount.com"}
    p = make_provider(tenant=None, instance_wide=True, name="Vertex", provider_type="vertex_ai", api_key=None,
                      base_url=upstream.url, config={"vertex_project": "eneo-prod", "vertex_location": "europe-west4",
                                                     "vertex_credentials": account})
    make_model(p, model_id="gemini-1.5-flash", alias="gemini", instance_wide=True)
    with pytest.raises(openai.APIStatusError):  # the fake does not speak Gemini
        client_of.chat.completions.create(model="gemini", messages=ASK)
    assert seen and json.loads(seen[0][0]) == account and seen[0][1] == "eneo-prod"
    path = upstream.last_request()["path"]
    assert "/projects/eneo-prod/locations/europe-west4/" in path and path.endswith("gemini-1.5-flash:generateContent")


@pytest.mark.parametrize("config, field", [
    ({"aws_region_name": "os.environ/OPENAI_API_KEY"}, "config.aws_region_name"),  # LiteLLM would read the env
    ({"aws_region_name": "eu-north-1", "aws_bedrock_runtime_endpoint": "http://127.0.0.2"},
     "config.aws_bedrock_runtime_endpoint"),  # the endpoint is base_url, under the egress policy
    ({"aws_region_name": "eu-north-1", "api_base": "http://127.0.0.2"}, "config.api_base"),
    ({"aws_region_name": "eu-north-1", "extra_headers": {"x": "1"}}, "config.extra_headers"),
    ({"aws_region_name": "eu-north-1", "aws_web_identity_token": "/etc/passwd"}, "config.aws_web_identity_token"),
])
def test_settings_refused_by_name(tenant, config, field):
    with pytest.raises(ValidationError) as exc:
        make_provider(tenant=tenant, name="Bad", provider_type="bedrock", api_key=None, config=config)
    assert field in exc.value.message_dict


def test_a_vertex_service_account_must_be_json_not_a_path(tenant):
    with pytest.raises(ValidationError) as exc:
        make_provider(tenant=tenant, name="V", provider_type="vertex_ai", api_key=None, config={
            "vertex_project": "p", "vertex_location": "europe-west4", "vertex_credentials": "/srv/keys/sa.json"})
    assert "not a path" in str(exc.value)


def test_operator_only_settings_are_for_sysadmins_on_instance_level_providers(tenant):
    p = make_provider(tenant=None, name="B", provider_type="bedrock", api_key=None,
                      config={"aws_region_name": "eu-north-1", "aws_role_name": "gateway"})  # a sysadmin: fine
    assert p.config.reveal()["aws_role_name"] == "gateway"
    with pytest.raises(ValidationError):
        services.provider_update(actor=Actor(name="ed", source="api", user_id=7), provider=p,
                                 config={"aws_region_name": "eu-north-1", "aws_profile_name": "x"})


def test_stored_settings_of_old_rows_are_filtered_at_call_time(client_of, upstream, attacker):
    """A config saved before the rules (written directly here) never sends a routing key."""
    from credentials import crypto
    from credentials.fields import Sealed
    from providers.models import Provider

    p = upstream_provider(upstream, "openai")
    make_model(p, model_id="gpt-4o-mini", alias="fast", instance_wide=True)
    Provider.objects.filter(pk=p.pk).update(config=Sealed(crypto.encrypt(json.dumps(
        {"api_base": attacker.url + "/v1", "organization": "os.environ/OPENAI_API_KEY"})), is_json=True))
    client_of.chat.completions.create(model="fast", messages=ASK)
    assert attacker.requests == [] and "openai-organization" not in upstream.last_request()["headers"]
