"""REST API /api/v1/ai-providers (and the sysadmin tenant API-key routes), through Django's test Client."""
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenants.scopes import Scope
from providers.models import AIModel, Provider, ProviderKey, TenantModelEnablement
from providers.services import provider_credential
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create, api_key_revoke
from tenants.models import AuditEvent, TenantApiKey

from .conftest import CANARY, dump_tables_text
from .factories import make_model, make_provider

ALL_SCOPES = [s.value for s in Scope]


def new_key(tenant, scopes=ALL_SCOPES, **extra) -> str:
    return api_key_create(actor=SYSTEM, tenant=tenant, name="test key", scopes=scopes, **extra).plaintext


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def call(client, method: str, path: str, headers: dict | None = None, body=None):
    kwargs = {} if body is None else {"data": json.dumps(body), "content_type": "application/json"}
    return getattr(client, method)(f"/api/v1{path}", **kwargs, **(headers or {}))


def snapshot() -> tuple:
    """Every provider, model, key and non-API-key audit row, to prove that a rejected call changed nothing."""
    return (list(Provider.objects.values()), list(AIModel.objects.values()), list(ProviderKey.objects.values()),
            AuditEvent.objects.exclude(action="api_key.create").count())


@pytest.fixture
def tenant_key(tenant):
    return bearer(new_key(tenant))


@pytest.fixture
def world(tenant):
    """A provider of `tenant` with one model and one key."""
    provider = make_provider(tenant=tenant, name="Acme OpenAI", api_key="sk-acme-first-key-1111",
                             models=[{"model_id": "gpt-4o-mini"}])
    return {"p": provider.public_id, "m": provider.models.get().pk, "k": provider.keys.get().pk}


# --- auth, scopes and tenant isolation, endpoint by endpoint ------------------------------------------------

ENDPOINTS = [
    # method, path, scope, body, status with the scope, status for another tenant's key
    ("get", "/ai-providers", Scope.LIST, None, 200, 200),
    ("post", "/ai-providers", Scope.CREATE, {"name": "New one", "provider_type": "openai"}, 201, 201),
    ("get", "/ai-providers/{p}", Scope.GET, None, 200, 404),
    ("patch", "/ai-providers/{p}", Scope.UPDATE, {"rpm": 60}, 200, 404),
    ("delete", "/ai-providers/{p}?force=true", Scope.DELETE, None, 204, 404),
    ("get", "/ai-providers/{p}/models", Scope.GET, None, 200, 404),
    ("post", "/ai-providers/{p}/models", Scope.UPDATE, {"model_id": "gpt-4o"}, 201, 404),
    ("get", "/ai-providers/{p}/models/{m}", Scope.GET, None, 200, 404),
    ("patch", "/ai-providers/{p}/models/{m}", Scope.UPDATE, {"alias": "fast"}, 200, 404),
    ("delete", "/ai-providers/{p}/models/{m}", Scope.UPDATE, None, 204, 404),
    ("get", "/ai-providers/{p}/keys", Scope.GET, None, 200, 404),
    ("post", "/ai-providers/{p}/keys", Scope.UPDATE, {"secret": "sk-second-key-2222"}, 201, 404),
    ("patch", "/ai-providers/{p}/keys/{k}", Scope.UPDATE, {"label": "old"}, 200, 404),
    ("delete", "/ai-providers/{p}/keys/{k}", Scope.UPDATE, None, 204, 404),
]


@pytest.mark.parametrize("method,path,scope,body,ok,other", ENDPOINTS, ids=[f"{e[0]} {e[1]}" for e in ENDPOINTS])
def test_auth_scope_and_isolation(client, tenant, other_tenant, world, method, path, scope, body, ok, other):
    path = path.format(**world)
    before = snapshot()

    assert call(client, method, path, {}, body).status_code == 401
    assert call(client, method, path, {"HTTP_X_API_KEY": "eneo_nope_nope"}, body).status_code == 401

    lacking = new_key(tenant, scopes=[s for s in ALL_SCOPES if s != scope])
    r = call(client, method, path, bearer(lacking), body)
    assert r.status_code == 403 and r.json() == {"detail": f"This API key lacks the scope {scope.value}"}

    r = call(client, method, path, bearer(new_key(other_tenant)), body)
    assert r.status_code == other, r.content
    if method == "get" and other == 200:
        assert r.json()["items"] == []  # the other tenant sees none of this tenant's providers
    if other != 201:
        assert snapshot() == before  # nothing changed

    r = call(client, method, path, {"HTTP_X_API_KEY": new_key(tenant, scopes=[scope.value])}, body)
    assert r.status_code == ok, r.content


def test_sysadmin_has_every_scope_and_sees_everything(client, tenant, other_tenant, super_headers):
    make_provider(tenant=tenant, name="A")
    make_provider(tenant=other_tenant, name="B")
    make_provider(tenant=None, name="C")
    r = call(client, "get", "/ai-providers", super_headers)
    assert [p["name"] for p in r.json()["items"]] == ["A", "B", "C"]

    r = call(client, "post", "/ai-providers", super_headers,
             {"name": "Shared", "provider_type": "openai", "instance_wide": True})
    assert r.status_code == 201 and r.json()["tenant_id"] is None and r.json()["instance_wide"] is True
    r = call(client, "post", "/ai-providers", super_headers,
             {"name": "For other", "provider_type": "openai", "tenant_id": str(other_tenant.pk)})
    assert r.status_code == 201 and r.json()["tenant_id"] == str(other_tenant.pk)
    r = call(client, "post", "/ai-providers", super_headers,
             {"name": "Nowhere", "provider_type": "openai", "tenant_id": "00000000-0000-0000-0000-000000000000"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tenant_id"]
    event = AuditEvent.objects.filter(action="provider.create", target_repr="Shared").get()
    assert event.actor == "super-api-key" and event.source == "api"


def test_super_key_only_in_x_api_key(client, tenant, settings):
    assert call(client, "get", "/ai-providers", bearer(settings.SUPER_API_KEY)).status_code == 401
    assert call(client, "get", "/ai-providers", {"HTTP_X_API_KEY": "wrong"}).status_code == 401


def test_revoked_expired_and_inactive_tenant_keys_are_401(client, tenant):
    created = api_key_create(actor=SYSTEM, tenant=tenant, name="soon gone", scopes=ALL_SCOPES)
    assert call(client, "get", "/ai-providers", bearer(created.plaintext)).status_code == 200
    api_key_revoke(actor=SYSTEM, api_key=created.api_key)
    assert call(client, "get", "/ai-providers", bearer(created.plaintext)).status_code == 401

    expired = new_key(tenant, expires_at=timezone.now() - timedelta(seconds=1))
    assert call(client, "get", "/ai-providers", bearer(expired)).status_code == 401
    tampered = new_key(tenant)[:-2] + "xx"
    assert call(client, "get", "/ai-providers", bearer(tampered)).status_code == 401

    key = new_key(tenant)
    tenant.is_active = False
    tenant.save()
    assert call(client, "get", "/ai-providers", {"HTTP_X_API_KEY": key}).status_code == 401


def test_tenant_key_creates_in_own_tenant_and_names_itself_in_audit(client, tenant, other_tenant,
                                                                     django_user_model):
    creator = django_user_model.objects.create_user("keymaker", password="pw-keymaker-123")
    created = api_key_create(actor=SYSTEM, tenant=tenant, name="ci", scopes=ALL_SCOPES, created_by=creator)
    headers = bearer(created.plaintext)
    r = call(client, "post", "/ai-providers", headers, {"name": "Mine", "provider_type": "openai"})
    assert r.status_code == 201 and r.json()["tenant_id"] == str(tenant.pk)
    assert Provider.objects.get(name="Mine").owner == creator
    event = AuditEvent.objects.get(action="provider.create")
    assert event.actor == f"api-key:{created.api_key.prefix}" and event.source == "api" and event.tenant == tenant

    r = call(client, "post", "/ai-providers", headers,
             {"name": "Theirs", "provider_type": "openai", "tenant_id": str(other_tenant.pk)})
    assert r.status_code == 403
    r = call(client, "post", "/ai-providers", headers, {"name": "Wide", "provider_type": "openai",
                                                         "instance_wide": True})
    assert r.status_code == 422 and "instance_wide" in r.content.decode()
    assert not Provider.objects.filter(name__in=["Theirs", "Wide"]).exists()


def test_instance_level_visibility_view_only_is_403(client, tenant, super_headers):
    wide = make_provider(tenant=None, name="Shared", instance_wide=True, models=[{"model_id": "gpt-4o"}])
    hidden = make_provider(tenant=None, name="Hidden", models=[{"model_id": "gpt-4o"}])
    headers = bearer(new_key(tenant))
    assert [p["name"] for p in call(client, "get", "/ai-providers", headers).json()["items"]] == ["Shared"]
    assert call(client, "get", f"/ai-providers/{wide.public_id}", headers).status_code == 200
    for method, path, body in [("patch", "", {"rpm": 1}), ("delete", "", None), ("post", "/keys", {"secret": "x" * 9}),
                               ("post", "/models", {"model_id": "m"})]:
        r = call(client, method, f"/ai-providers/{wide.public_id}{path}", headers, body)
        assert r.status_code == 403, (method, path, r.content)
    assert call(client, "get", f"/ai-providers/{hidden.public_id}", headers).status_code == 404
    assert call(client, "patch", f"/ai-providers/{hidden.public_id}", headers, {"rpm": 1}).status_code == 404

    # Enabling a model for the tenant is a sysadmin action, and makes the provider visible to the tenant.
    model = hidden.models.get()
    path = f"/ai-providers/{hidden.public_id}/models/{model.pk}/tenants/{tenant.pk}"
    sysadmin_wide_path = f"/ai-providers/{wide.public_id}/models/{wide.models.get().pk}/tenants/{tenant.pk}"
    assert call(client, "post", path, headers).status_code == 404  # not visible to the tenant yet
    assert call(client, "post", sysadmin_wide_path, headers).status_code == 403  # visible, but sysadmin only
    assert call(client, "post", path, {}).status_code == 401
    r = call(client, "post", path, super_headers)
    assert r.status_code == 200 and r.json() == {"provider_id": hidden.public_id, "model_pk": model.pk,
                                                 "tenant_id": str(tenant.pk), "enabled": True}
    assert call(client, "post", path, super_headers).status_code == 200  # idempotent
    assert TenantModelEnablement.objects.filter(tenant=tenant, model=model).count() == 1
    assert call(client, "get", f"/ai-providers/{hidden.public_id}", headers).status_code == 200
    assert call(client, "get", f"/ai-providers/{hidden.public_id}/models/{model.pk}", headers).status_code == 200
    assert call(client, "delete", path, headers).status_code == 403
    r = call(client, "delete", path, super_headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert call(client, "get", f"/ai-providers/{hidden.public_id}", headers).status_code == 404
    bad = f"/ai-providers/{hidden.public_id}/models/{model.pk}/tenants/00000000-0000-0000-0000-000000000000"
    assert call(client, "post", bad, super_headers).status_code == 404


def test_enabling_a_tenants_own_model_for_another_tenant_is_422(client, tenant, other_tenant, super_headers):
    p = make_provider(tenant=tenant, models=[{"model_id": "gpt-4o"}])
    path = f"/ai-providers/{p.public_id}/models/{p.models.get().pk}/tenants/{other_tenant.pk}"
    assert call(client, "post", path, super_headers).status_code == 422


# --- bodies: 422 and 409 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,field", [
    ({"name": "X", "provider_type": "nosuchai"}, "provider_type"),
    ({"name": "X", "provider_type": "azure", "api_version": "2024-06-01"}, "base_url"),
    ({"name": "X", "provider_type": "azure", "base_url": "https://x.openai.azure.com"}, "api_version"),
    ({"name": "X", "provider_type": "openai", "base_url": "not a url"}, "base_url"),
    ({"name": "X", "provider_type": "openai", "base_url": "ftp://files.example.org"}, "base_url"),
    ({"name": "X", "provider_type": "openai", "base_url": "https://user:pw@example.org/v1"}, "base_url"),
    ({"name": "X", "provider_type": "openai", "config": ["not", "a", "dict"]}, "config"),
    ({"name": "X", "provider_type": "openai", "config": "token=abc"}, "config"),
    ({"name": "X", "provider_type": "openai", "rpm": "many"}, "rpm"),
    ({"name": "X", "provider_type": "openai", "rpm": -1}, "rpm"),
    ({"name": "X", "provider_type": "openai", "tpm": 10**12}, "tpm"),
    ({"name": 5, "provider_type": "openai"}, "name"),
    ({"name": "", "provider_type": "openai"}, "name"),
    ({"name": "A\x00B", "provider_type": "openai"}, "name"),
    ({"provider_type": "openai"}, "name"),
    ({"name": "X"}, "provider_type"),
    ({"name": "X", "provider_type": "openai", "status": "sleeping"}, "status"),
    ({"name": "X", "provider_type": "openai", "capabilities": {"telepathy": True}}, "capabilities"),
    ({"name": "X", "provider_type": "openai", "capabilities": {"vision": "maybe"}}, "capabilities"),
    ({"name": "X", "provider_type": "openai", "api_key": 12345}, "api_key"),
    ({"name": "X", "provider_type": "openai", "colour": "blue"}, "colour"),
    ({"name": "X", "provider_type": "openai", "models": [{"model_id": "m", "model_type": "bogus"}]}, "model_type"),
    ({"name": "X", "provider_type": "openai", "models": [{"model_id": "m", "alias": "not a slug"}]}, "alias"),
    ({"name": "X", "provider_type": "openai", "models": [{"model_id": "m", "input_cost_per_million": "x"}]},
     "input_cost_per_million"),
    ({"name": "X", "provider_type": "openai", "models": [{"model_id": ""}]}, "model_id"),
])
def test_bad_create_bodies_are_422(client, tenant_key, body, field):
    r = call(client, "post", "/ai-providers", tenant_key, body)
    assert r.status_code == 422, r.content
    assert field in json.dumps(r.json()["detail"])
    assert "pw@" not in r.content.decode()
    assert not Provider.objects.exists() and not AIModel.objects.exists() and not ProviderKey.objects.exists()


def test_unknown_type_lists_valid_ones(client, tenant_key):
    r = call(client, "post", "/ai-providers", tenant_key, {"name": "X", "provider_type": "nosuchai"})
    msg = r.json()["detail"][0]["msg"]
    assert "Unknown provider type 'nosuchai'" in msg and all(t in msg for t in ("openai", "azure", "anthropic"))


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", ""])
def test_malformed_bodies_are_4xx(client, tenant_key, payload):
    r = client.post("/api/v1/ai-providers", data=payload, content_type="application/json", **tenant_key)
    assert 400 <= r.status_code < 500


def test_azure_and_vllm_alias(client, tenant_key):
    r = call(client, "post", "/ai-providers", tenant_key, {
        "name": "Azure", "provider_type": "azure", "base_url": "https://acme.openai.azure.com/",
        "api_version": "2024-06-01", "api_key": "azure-key-abcd", "models": [{"model_id": "gpt4o-deployment"}]})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["base_url"] == "https://acme.openai.azure.com" and body["models_count"] == 1
    assert body["active_key_last4"] == "...abcd" and body["keys_count"] == 1
    r = call(client, "post", "/ai-providers", tenant_key, {"name": "GPU", "provider_type": "VLLM",
                                                           "base_url": "http://gpu.example.org:8000/v1"})
    assert r.status_code == 201 and r.json()["provider_type"] == "hosted_vllm"


def test_duplicate_name_is_409(client, tenant, other_tenant, tenant_key):
    make_provider(tenant=tenant, name="Main")
    r = call(client, "post", "/ai-providers", tenant_key, {"name": "Main", "provider_type": "openai"})
    assert r.status_code == 409 and "Main" in r.json()["detail"]
    other = make_provider(tenant=tenant, name="Second")
    r = call(client, "patch", f"/ai-providers/{other.public_id}", tenant_key, {"name": "Main"})
    assert r.status_code == 409
    make_provider(tenant=other_tenant, name="Elsewhere")
    r = call(client, "post", "/ai-providers", tenant_key, {"name": "Elsewhere", "provider_type": "openai"})
    assert r.status_code == 201  # names are unique per tenant only


def test_delete_with_models_is_409_unless_forced(client, tenant, tenant_key):
    p = make_provider(tenant=tenant, models=[{"model_id": "a"}, {"model_id": "b"}])
    r = call(client, "delete", f"/ai-providers/{p.public_id}", tenant_key)
    assert r.status_code == 409 and "2 model(s)" in r.json()["detail"]
    assert call(client, "delete", f"/ai-providers/{p.public_id}?force=true", tenant_key).status_code == 204
    assert not Provider.objects.exists() and not AIModel.objects.exists()
    assert call(client, "get", f"/ai-providers/{p.public_id}", tenant_key).status_code == 404
    empty = make_provider(tenant=tenant)
    assert call(client, "delete", f"/ai-providers/{empty.public_id}", tenant_key).status_code == 204


# --- read, update -------------------------------------------------------------------------------------------

def test_get_shape_and_partial_update(client, tenant, tenant_key):
    p = make_provider(tenant=tenant, name="Acme", api_key="sk-acme-key-9876", rpm=10,
                      config={"organization": "org-acme"}, capabilities={"vision": True})
    r = call(client, "get", f"/ai-providers/{p.public_id}", tenant_key)
    body = r.json()
    assert set(body) == {"id", "name", "provider_type", "tenant_id", "base_url", "api_version", "capabilities",
                         "instance_wide", "status", "rpm", "tpm", "max_concurrency", "health", "has_config",
                         "settings", "secret_settings", "keys_count", "active_key_last4", "models_count", "created_at", "updated_at"}
    assert body["id"] == p.public_id and body["has_config"] is True and body["active_key_last4"] == "...9876"
    assert body["health"] == {"status": "unknown", "checked_at": None, "latency_ms": None, "error": ""}
    assert body["settings"] == {"organization": "org-acme"} and body["secret_settings"] == []  # not secret

    r = call(client, "patch", f"/ai-providers/{p.public_id}", tenant_key,
             {"tpm": 5000, "base_url": "https://proxy.example.org/v1/", "config": None, "status": "inactive"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["rpm"] == 10 and body["tpm"] == 5000 and body["name"] == "Acme"  # untouched fields kept
    assert body["base_url"] == "https://proxy.example.org/v1" and body["has_config"] is False
    assert body["status"] == "inactive" and body["capabilities"] == {"vision": True}
    r = call(client, "patch", f"/ai-providers/{p.public_id}", tenant_key, {"config": {"organization": "o2"}, "base_url": None})
    assert r.json()["has_config"] is True and r.json()["base_url"] == ""
    p.refresh_from_db()
    assert p.config.reveal() == {"organization": "o2"}
    for bad in ({"config": [1]}, {"config": {"org": "x"}}, {"config": {"organization": "os.environ/OPENAI_API_KEY"}},
                {"provider_type": "anthropic"}, {"rpm": "x"}, {"name": None}, {"status": "x"}):
        assert call(client, "patch", f"/ai-providers/{p.public_id}", tenant_key, bad).status_code == 422, bad


def test_list_pagination_and_filters(client, tenant, tenant_key):
    for i in range(7):
        make_provider(tenant=tenant, name=f"P{i}", provider_type="openai" if i % 2 else "anthropic")
    make_provider(tenant=tenant, name="GPU box", provider_type="hosted_vllm", base_url="http://gpu.example.org:8000/v1",
                  status="inactive")
    r = call(client, "get", "/ai-providers?limit=3&offset=3", tenant_key)
    assert r.json()["count"] == 8 and [p["name"] for p in r.json()["items"]] == ["P2", "P3", "P4"]

    def names(query: str) -> list[str]:
        return [p["name"] for p in call(client, "get", f"/ai-providers?{query}", tenant_key).json()["items"]]

    assert names("provider_type=openai") == ["P1", "P3", "P5"]
    assert names("provider_type=VLLM") == ["GPU box"]
    assert names("status=inactive") == ["GPU box"]
    assert names("health_status=unknown&q=p6") == ["P6"]
    assert names("health_status=healthy") == []
    for bad in ("provider_type=nosuchai", "status=sleeping", "limit=0", "limit=100000", "offset=-1"):
        r = call(client, "get", f"/ai-providers?{bad}", tenant_key)
        assert r.status_code == 422, bad
    r = call(client, "get", "/ai-providers?provider_type=nosuchai", tenant_key)
    assert r.json()["detail"][0]["loc"] == ["query", "provider_type"]


def _queries_for_list(client, headers) -> int:
    with CaptureQueriesContext(connection) as ctx:
        r = call(client, "get", "/ai-providers?limit=100", headers)
    assert r.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("super_key", [False, True])
def test_list_runs_constant_queries(client, tenant, super_headers, django_assert_max_num_queries, super_key):
    headers = super_headers if super_key else bearer(new_key(tenant))
    call(client, "get", "/ai-providers", headers)  # the key's first use writes last_used_at
    for _ in range(3):
        make_provider(tenant=tenant, models=[{"model_id": "a"}, {"model_id": "b"}]).keys.create(secret="sk-2nd-1")
    with django_assert_max_num_queries(4):
        few = _queries_for_list(client, headers)
    for _ in range(27):
        make_provider(tenant=tenant, models=[{"model_id": "a"}, {"model_id": "b"}]).keys.create(secret="sk-2nd-1")
    with django_assert_max_num_queries(4):
        many = _queries_for_list(client, headers)
    assert few == many
    items = call(client, "get", "/ai-providers?limit=100", headers).json()["items"]
    assert len(items) == 30 and {(p["models_count"], p["keys_count"]) for p in items} == {(2, 2)}


def test_nested_lists_run_constant_queries(client, tenant, tenant_key):
    p = make_provider(tenant=tenant)
    call(client, "get", "/ai-providers", tenant_key)  # the key's first use writes last_used_at

    def queries(path: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert call(client, "get", f"/ai-providers/{p.public_id}{path}?limit=100", tenant_key).status_code == 200
        return len(ctx.captured_queries)

    few = (queries("/models"), queries("/keys"))
    for n in range(20):
        make_model(p)
        p.keys.create(secret=f"sk-extra-{n:04d}", last4=f"{n:04d}")
    assert (queries("/models"), queries("/keys")) == few


# --- nested models and keys ---------------------------------------------------------------------------------

def test_models_crud(client, tenant, tenant_key):
    p = make_provider(tenant=tenant)
    base = f"/ai-providers/{p.public_id}/models"
    r = call(client, "post", base, tenant_key, {"model_id": "gpt-4o-mini", "alias": "fast",
                                                "model_config": {"temperature": 0.2, "user": "x"}})
    assert r.status_code == 422 and "user" in r.json()["detail"][0]["msg"]  # not a stored call setting
    r = call(client, "post", base, tenant_key, {"model_id": "gpt-4o-mini", "alias": "fast",
                                                "model_config": {"temperature": 0.2, "seed": 7}})
    assert r.status_code == 201, r.content
    mini = r.json()
    assert mini["context_window"] == 128000 and mini["supports_vision"] is True  # from LiteLLM's registry
    assert mini["input_cost_per_million"] == "0.1500" and mini["has_config"] is True
    assert mini["provider_id"] == p.public_id and "cfg-secret-1" not in r.content.decode()
    assert call(client, "post", base, tenant_key, {"model_id": "gpt-4o-mini"}).status_code == 409
    r = call(client, "post", base, tenant_key, {"model_id": "embedder", "model_type": "embedding",
                                                "input_cost_per_million": "0.02", "context_window": 8191})
    assert r.status_code == 201 and r.json()["model_type"] == "embedding"
    assert r.json()["input_cost_per_million"] == "0.0200" and r.json()["context_window"] == 8191

    listing = call(client, "get", base, tenant_key).json()
    assert listing["count"] == 2 and [m["model_id"] for m in listing["items"]] == ["embedder", "gpt-4o-mini"]
    assert call(client, "get", f"{base}/{mini['id']}", tenant_key).json()["alias"] == "fast"

    r = call(client, "patch", f"{base}/{mini['id']}", tenant_key,
             {"display_label": "GPT-4o mini", "status": "inactive", "model_config": None, "alias": None})
    assert r.status_code == 200, r.content
    assert r.json()["display_label"] == "GPT-4o mini" and r.json()["status"] == "inactive"
    assert r.json()["has_config"] is False and r.json()["alias"] == "" and r.json()["context_window"] == 128000
    for bad in ({"model_type": "bogus"}, {"context_window": -5}, {"model_config": "x"}, {"provider": "y"},
                {"alias": "a b"}, {"model_id": ""}):
        assert call(client, "patch", f"{base}/{mini['id']}", tenant_key, bad).status_code == 422, bad
    assert call(client, "patch", f"{base}/{mini['id']}", tenant_key, {"model_id": "embedder"}).status_code == 409

    assert call(client, "delete", f"{base}/{mini['id']}", tenant_key).status_code == 204
    assert call(client, "get", f"{base}/{mini['id']}", tenant_key).status_code == 404
    assert call(client, "get", f"{base}/999999", tenant_key).status_code == 404
    assert call(client, "get", f"{base}/not-a-number", tenant_key).status_code == 422
    other = make_provider(tenant=tenant)
    embedder = AIModel.objects.get(model_id="embedder")
    assert call(client, "get", f"/ai-providers/{other.public_id}/models/{embedder.pk}", tenant_key).status_code == 404


def test_key_rotation_through_the_api(client, tenant, tenant_key):
    p = make_provider(tenant=tenant, api_key="sk-old-key-aaaa1111", key_label="old")
    old = p.keys.get()
    base = f"/ai-providers/{p.public_id}/keys"
    r = call(client, "post", base, tenant_key, {"secret": "  sk-new-key-bbbb2222  ", "label": "prod 2026-11"})
    assert r.status_code == 201, r.content
    new = r.json()
    assert new["masked"] == "...2222" and new["is_active"] and new["label"] == "prod 2026-11"
    assert set(new) == {"id", "label", "masked", "is_active", "created_at", "last_used_at"}
    assert provider_credential(provider=p, tenant=None).api_key == "sk-new-key-bbbb2222"  # the newest active key

    r = call(client, "patch", f"{base}/{old.pk}", tenant_key, {"is_active": False, "label": "retired"})
    assert r.status_code == 200 and r.json()["is_active"] is False and r.json()["label"] == "retired"
    keys = call(client, "get", base, tenant_key).json()
    assert [(k["masked"], k["is_active"]) for k in keys["items"]] == [("...2222", True), ("...1111", False)]
    assert "sk-new-key" not in json.dumps(keys)
    r = call(client, "patch", f"{base}/{new['id']}", tenant_key, {"is_active": False})
    assert r.json()["is_active"] is False
    from credentials.resolution import CredentialMissing

    with pytest.raises(CredentialMissing):  # disabled keys are never used
        provider_credential(provider=p, tenant=None)
    call(client, "patch", f"{base}/{new['id']}", tenant_key, {"is_active": True})
    assert provider_credential(provider=p, tenant=None).api_key == "sk-new-key-bbbb2222"
    got = call(client, "get", f"/ai-providers/{p.public_id}", tenant_key).json()
    assert got["active_key_last4"] == "...2222" and got["keys_count"] == 2

    assert call(client, "delete", f"{base}/{old.pk}", tenant_key).status_code == 204
    assert call(client, "delete", f"{base}/{old.pk}", tenant_key).status_code == 404
    for bad in ({}, {"secret": ""}, {"secret": "   "}, {"secret": 5}, {"secret": "k", "label": "x" * 101}):
        assert call(client, "post", base, tenant_key, bad).status_code == 422, bad
    assert call(client, "patch", f"{base}/{new['id']}", tenant_key, {"is_active": "perhaps"}).status_code == 422
    actions = set(AuditEvent.objects.filter(action__startswith="provider_key").values_list("action", flat=True))
    assert actions == {"provider_key.add", "provider_key.disable", "provider_key.enable", "provider_key.relabel",
                       "provider_key.delete"}


def test_canary_never_leaves_the_api_or_lands_in_plaintext(client, tenant, tenant_key, all_logs):
    r = call(client, "post", "/ai-providers", tenant_key, {
        "name": "Canary", "provider_type": "openai", "api_key": CANARY, "config": {"organization": "org-1"},
        "models": [{"model_id": "gpt-4o", "model_config": {"prompt_cache_key": CANARY}}]})
    assert r.status_code == 201, r.content
    pid = r.json()["id"]
    bodies = [r.content.decode()]
    for path in ("", f"/{pid}", f"/{pid}/keys", f"/{pid}/models"):
        resp = call(client, "get", f"/ai-providers{path}", tenant_key)
        assert resp.status_code == 200
        bodies.append(resp.content.decode())
    r = call(client, "post", f"/ai-providers/{pid}/keys", tenant_key, {"secret": CANARY + "-2"})
    bodies.append(r.content.decode())
    r = call(client, "patch", f"/ai-providers/{pid}", tenant_key, {"config": {"token": CANARY}, "rpm": "bad"})
    bodies.append(r.content.decode())
    assert all(CANARY not in b for b in bodies)
    assert CANARY not in dump_tables_text()
    assert CANARY not in "\n".join(all_logs["masked"])


def test_openapi_lists_the_new_paths(admin_client):
    paths = admin_client.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/api/v1/ai-providers", "/api/v1/ai-providers/{provider_id}",
                 "/api/v1/ai-providers/{provider_id}/models", "/api/v1/ai-providers/{provider_id}/models/{model_pk}",
                 "/api/v1/ai-providers/{provider_id}/models/{model_pk}/tenants/{tenant_id}",
                 "/api/v1/ai-providers/{provider_id}/keys", "/api/v1/ai-providers/{provider_id}/keys/{key_id}",
                 "/api/v1/provider-types", "/api/v1/provider-types/{provider_type}",
                 "/api/v1/sysadmin/tenants/{tenant_id}/api-keys",
                 "/api/v1/sysadmin/tenants/{tenant_id}/api-keys/{key_id}"):
        assert path in paths, path
    assert "lacks the scope" not in json.dumps(paths)  # docs are docstrings, not error texts
    assert "aiProviders:ListAiProviders" in paths["/api/v1/ai-providers"]["get"]["description"]


# --- sysadmin: tenant API keys ------------------------------------------------------------------------------

KEYS = "/sysadmin/tenants/{}/api-keys"


def test_sysadmin_creates_lists_and_revokes_tenant_keys(client, tenant, other_tenant, super_headers):
    r = call(client, "post", KEYS.format(tenant.pk), super_headers,
             {"name": "intranet bot", "scopes": ["aiProviders:ListAiProviders"]})
    assert r.status_code == 201, r.content
    body = r.json()
    plaintext = body["api_key"]
    assert plaintext.startswith(f"eneo_{body['prefix']}_") and body["message"] == \
        "Store this key now: it is shown only once."
    assert body["scopes"] == ["aiProviders:ListAiProviders"] and body["name"] == "intranet bot"
    assert plaintext not in dump_tables_text()

    assert call(client, "get", "/ai-providers", bearer(plaintext)).status_code == 200
    assert call(client, "get", "/ai-providers/aip_x", bearer(plaintext)).status_code == 403  # scope missing

    listing = call(client, "get", KEYS.format(tenant.pk), super_headers)
    assert listing.status_code == 200 and listing.json()["count"] == 1
    row = listing.json()["items"][0]
    assert set(row) == {"id", "tenant_id", "name", "prefix", "scopes", "is_active", "expires_at", "created_at",
                        "last_used_at"}
    secret = plaintext[len(f"eneo_{body['prefix']}_"):]
    assert row["last_used_at"] is not None and secret not in listing.content.decode()
    assert call(client, "get", KEYS.format(other_tenant.pk), super_headers).json()["count"] == 0

    assert call(client, "delete", f"{KEYS.format(other_tenant.pk)}/{body['id']}", super_headers).status_code == 404
    assert call(client, "delete", f"{KEYS.format(tenant.pk)}/{body['id']}", super_headers).status_code == 204
    assert call(client, "delete", f"{KEYS.format(tenant.pk)}/{body['id']}", super_headers).status_code == 204
    assert call(client, "get", "/ai-providers", bearer(plaintext)).status_code == 401
    assert call(client, "get", KEYS.format(tenant.pk), super_headers).json()["items"][0]["is_active"] is False
    assert AuditEvent.objects.filter(action="api_key.revoke").count() == 1


def test_sysadmin_key_routes_need_the_super_key(client, tenant):
    tenant_key = new_key(tenant, scopes=["*"])
    for headers in ({}, bearer(tenant_key), {"HTTP_X_API_KEY": tenant_key}, {"HTTP_X_API_KEY": "wrong"}):
        assert call(client, "get", KEYS.format(tenant.pk), headers).status_code == 401
        assert call(client, "post", KEYS.format(tenant.pk), headers, {"name": "x"}).status_code == 401
        assert call(client, "delete", f"{KEYS.format(tenant.pk)}/1", headers).status_code == 401
    assert TenantApiKey.objects.count() == 1


@pytest.mark.parametrize("body,field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "k", "scopes": "aiProviders:ListAiProviders"}, "scopes"),
    ({"name": "k", "scopes": ["not a scope"]}, "scopes"),
    ({"name": "k", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "k", "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
    ({"name": "k", "secret": "mine"}, "secret"),
])
def test_bad_api_key_bodies_are_422(client, tenant, super_headers, body, field):
    r = call(client, "post", KEYS.format(tenant.pk), super_headers, body)
    assert r.status_code == 422 and field in json.dumps(r.json()["detail"])
    assert not TenantApiKey.objects.exists()


def test_api_key_routes_unknown_tenant_404(db, client, super_headers):
    tid = "00000000-0000-0000-0000-000000000000"
    assert call(client, "post", KEYS.format(tid), super_headers, {"name": "k"}).status_code == 404
    assert call(client, "get", KEYS.format(tid), super_headers).status_code == 404
    assert call(client, "delete", f"{KEYS.format(tid)}/1", super_headers).status_code == 404


def test_api_key_with_expiry_and_wildcard_scope(client, tenant, super_headers):
    r = call(client, "post", KEYS.format(tenant.pk), super_headers,
             {"name": "temp", "scopes": ["*"], "expires_at": "2999-01-01T00:00:00+01:00"})
    assert r.status_code == 201
    assert datetime.fromisoformat(r.json()["expires_at"]) == datetime(2998, 12, 31, 23, tzinfo=UTC)
    p = make_provider(tenant=tenant)
    make_model(p)
    r = call(client, "delete", f"/ai-providers/{p.public_id}?force=true", bearer(r.json()["api_key"]))
    assert r.status_code == 204
