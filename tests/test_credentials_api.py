import json
import uuid

import pytest

from credentials.models import TenantCredential
from tenants.models import AuditEvent

from .conftest import CANARY, dump_tables_text

BASE = "/api/v1/sysadmin/tenants/{}/credentials"


def put(client, tenant_id, provider, body, headers):
    return client.put(f"{BASE.format(tenant_id)}/{provider}", data=json.dumps(body),
                      content_type="application/json", **headers)


@pytest.mark.parametrize("headers", [{}, {"HTTP_X_API_KEY": "wrong"}, {"HTTP_AUTHORIZATION": "Bearer test-super-api-key-0123456789"}])
def test_auth_required(client, tenant, headers):
    assert client.get(BASE.format(tenant.pk), **headers).status_code == 401
    assert put(client, tenant.pk, "openai", {"api_key": "sk-x"}, headers).status_code == 401
    assert client.delete(f"{BASE.format(tenant.pk)}/openai", **headers).status_code == 401
    assert not TenantCredential.objects.exists()


def test_accepts_alias_env_names(client, tenant, settings):
    settings.SUPER_API_KEY = "another-super-key-abcdef"
    assert client.get(BASE.format(tenant.pk), HTTP_X_API_KEY="another-super-key-abcdef").status_code == 200


def test_no_super_key_configured_rejects_everyone(client, tenant, settings):
    settings.SUPER_API_KEY = ""
    assert client.get(BASE.format(tenant.pk), HTTP_X_API_KEY="").status_code == 401


def test_put_list_replace_delete(client, tenant, super_headers):
    r = put(client, tenant.pk, "OpenAI", {"api_key": "  sk-first-key-aaaa1111  "}, super_headers)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["provider"] == "openai" and body["masked_key"] == "...1111"
    assert body["tenant_id"] == str(tenant.pk) and "set_at" in body and "message" in body
    first_set_at = body["set_at"]

    r = put(client, tenant.pk, "openai", {"api_key": "sk-second-key-bbbb2222", "endpoint": "https://proxy.example.org/v1/"}, super_headers)
    assert r.json()["masked_key"] == "...2222" and r.json()["set_at"] != first_set_at
    assert TenantCredential.objects.count() == 1

    listing = client.get(BASE.format(tenant.pk), **super_headers).json()
    assert listing["credentials"] == [{
        "provider": "openai", "masked_key": "...2222", "encryption_status": "encrypted",
        "endpoint": "https://proxy.example.org/v1", "api_version": "", "deployment_name": "", "has_extra": False,
        "settings": {}, "secret_settings": [],
        "configured_at": listing["credentials"][0]["configured_at"], "updated_at": listing["credentials"][0]["updated_at"],
    }]
    assert "sk-second-key" not in json.dumps(listing)

    r = client.delete(f"{BASE.format(tenant.pk)}/openai", **super_headers)
    assert r.status_code == 200 and r.json()["deleted"] is True
    r = client.delete(f"{BASE.format(tenant.pk)}/openai", **super_headers)
    assert r.status_code == 200 and r.json()["deleted"] is False  # idempotent
    assert client.get(BASE.format(tenant.pk), **super_headers).json()["credentials"] == []
    actions = list(AuditEvent.objects.filter(action__startswith="credential").values_list("action", flat=True))
    assert sorted(actions) == ["credential.delete", "credential.list", "credential.list", "credential.replace",
                               "credential.set"]  # reads through the sysadmin API are audited too


def test_vllm_is_alias_of_hosted_vllm(client, tenant, super_headers):
    r = put(client, tenant.pk, "vllm", {"api_key": "vllm-key-1234"}, super_headers)
    assert r.status_code == 200 and r.json()["provider"] == "hosted_vllm"


def test_short_key_masked_fully(client, tenant, super_headers):
    assert put(client, tenant.pk, "openai", {"api_key": "abcd"}, super_headers).json()["masked_key"] == "***"


def test_unknown_tenant_404(db, client, super_headers):
    tid = uuid.uuid4()
    assert client.get(BASE.format(tid), **super_headers).status_code == 404
    assert put(client, tid, "openai", {"api_key": "sk-abc12345"}, super_headers).status_code == 404
    assert client.delete(f"{BASE.format(tid)}/openai", **super_headers).status_code == 404


def test_invalid_tenant_id_is_4xx(client, super_headers):
    assert client.get(BASE.format("not-a-uuid"), **super_headers).status_code == 422


@pytest.mark.parametrize("body", [{}, {"api_key": ""}, {"api_key": "   "}, {"api_key": 5}, {"api_key": "k" * 5000}])
def test_bad_api_key_is_422(client, tenant, super_headers, body):
    r = put(client, tenant.pk, "openai", body, super_headers)
    assert r.status_code == 422
    assert "api_key" in json.dumps(r.json()["detail"])
    assert not TenantCredential.objects.exists()


def test_malformed_json_is_4xx(client, tenant, super_headers):
    r = client.put(f"{BASE.format(tenant.pk)}/openai", data="{not json", content_type="application/json", **super_headers)
    assert 400 <= r.status_code < 500


def test_azure_requires_all_fields(client, tenant, super_headers):
    r = put(client, tenant.pk, "azure", {"api_key": "azure-key-123456"}, super_headers)
    assert r.status_code == 422
    detail = r.json()["detail"]
    fields = {d["loc"][-1] for d in detail}
    assert fields == {"endpoint", "api_version", "deployment_name"}
    assert all("requires: endpoint, api_version, deployment_name; and one of: api_key | azure_ad_token" in d["msg"]
               for d in detail)
    assert not TenantCredential.objects.exists()
    ok = put(client, tenant.pk, "azure", {"api_key": "azure-key-123456", "endpoint": "https://x.openai.azure.com",
                                          "api_version": "2024-06-01", "deployment_name": "gpt4o"}, super_headers)
    assert ok.status_code == 200


def test_unknown_provider_lists_valid_ones(client, tenant, super_headers):
    r = put(client, tenant.pk, "nosuchai", {"api_key": "k-123456"}, super_headers)
    assert r.status_code == 422
    msg = r.json()["detail"][0]["msg"]
    assert "Unknown provider type 'nosuchai'" in msg and "openai" in msg and "anthropic" in msg and "azure" in msg


@pytest.mark.parametrize("endpoint", ["ftp://x.example.org", "not a url", "https://user:pw@host.example.org/v1"])
def test_bad_endpoint_rejected(client, tenant, super_headers, endpoint):
    r = put(client, tenant.pk, "openai", {"api_key": "sk-abc12345", "endpoint": endpoint}, super_headers)
    assert r.status_code == 422 and "endpoint" in json.dumps(r.json())
    assert "pw@" not in r.content.decode()


def test_undecryptable_credential_is_listed_and_deletable(client, tenant, super_headers, settings):
    from cryptography.fernet import Fernet

    put(client, tenant.pk, "openai", {"api_key": "sk-will-be-lost-9999"}, super_headers)
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()
    listing = client.get(BASE.format(tenant.pk), **super_headers)
    assert listing.status_code == 200
    assert listing.json()["credentials"][0]["encryption_status"] == "undecryptable"
    assert listing.json()["credentials"][0]["masked_key"] == "...9999"
    r = client.delete(f"{BASE.format(tenant.pk)}/openai", **super_headers)
    assert r.status_code == 200 and r.json()["deleted"]


def test_openapi_docs_served(admin_client):
    from django.test import Client

    client = Client()
    assert client.get("/api/v1/openapi.json").status_code == 302  # staff only, like the docs
    schema = admin_client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    assert "/api/v1/sysadmin/tenants/{tenant_id}/credentials/{provider}" in schema.json()["paths"]
    assert client.get("/api/v1/docs").status_code == 302  # staff only
    assert admin_client.get("/api/v1/docs").status_code == 200


def test_canary_never_leaves_the_database_in_clear(client, admin_client, tenant, super_headers, all_logs):
    bodies = []
    r = put(client, tenant.pk, "bedrock", {"api_key": CANARY, "extra": {
        "aws_region_name": "eu-north-1", "aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": CANARY}},
        super_headers)
    bodies.append(r.content.decode())
    r = put(client, tenant.pk, "azure", {"api_key": CANARY}, super_headers)  # a 422 error path
    bodies.append(r.content.decode())
    bodies.append(client.get(BASE.format(tenant.pk), **super_headers).content.decode())
    cred = TenantCredential.objects.get()
    for url in ["/admin/tenants/tenant/", f"/admin/tenants/tenant/{tenant.pk}/change/",
                "/admin/credentials/tenantcredential/", f"/admin/credentials/tenantcredential/{cred.pk}/change/",
                "/admin/tenants/auditevent/"]:
        page = admin_client.get(url)
        assert page.status_code == 200, url
        bodies.append(page.content.decode())
    for body in bodies:
        assert CANARY not in body
    assert "...zz91" in bodies[0]
    assert not any(CANARY in line for line in all_logs["raw"] + all_logs["masked"])
    dump = dump_tables_text()
    assert CANARY not in dump
    assert CANARY[-8:] not in dump  # not even a long suffix
