"""The sysadmin tenants API (tenants/tenants_api.py): create, list, read, change and delete tenants and their
members with the super key, through the audited services; tenant keys get 401; bad input is a 4xx naming the
field; a deactivated or deleted tenant's API key is refused by the gateway."""
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model

from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.models import AuditEvent, Tenant, TenantMembership

BASE = "/api/v1/sysadmin/tenants"


def call(client, method, path, headers, body=None):
    kwargs = {"data": body, "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)(path, **kwargs, **headers)


def test_tenant_lifecycle_is_audited(client, db, super_headers):
    r = call(client, "post", BASE, super_headers, {"name": "City of Lund", "slug": "lund", "monthly_budget": "250.00"})
    assert r.status_code == 201, r.content
    created = r.json()
    assert (created["name"], created["slug"], created["is_active"], created["monthly_budget"]) == \
        ("City of Lund", "lund", True, "250.00")
    url = f"{BASE}/{created['id']}"
    assert call(client, "get", url, super_headers).json() == created

    changed = call(client, "patch", url, super_headers, {"is_active": False, "monthly_budget": None}).json()
    assert (changed["is_active"], changed["monthly_budget"], changed["name"]) == (False, None, "City of Lund")
    listed = call(client, "get", BASE + "?q=lun&is_active=false", super_headers).json()
    assert [t["slug"] for t in listed["items"]] == ["lund"]

    assert call(client, "delete", url, super_headers).status_code == 204
    assert not Tenant.objects.filter(slug="lund").exists()
    assert call(client, "get", url, super_headers).status_code == 404
    actions = list(AuditEvent.objects.filter(target_type="tenants.tenant").order_by("id")
                   .values_list("action", "source"))
    assert [a for a, _ in actions] == ["tenant.create", "tenant.update", "tenant.delete"]
    assert {s for _, s in actions} == {"api"}


@pytest.mark.parametrize("body,field", [
    ({"name": "", "slug": "x"}, "name"),
    ({"name": "X", "slug": "has space"}, "slug"),
    ({"name": "X", "slug": "x", "monthly_budget": "-1"}, "monthly_budget"),
    ({"name": "X", "slug": "x", "monthly_budget": "1.234"}, "monthly_budget"),
    ({"name": "X", "slug": "x", "colour": "red"}, "colour"),
    ({"name": "Acme Municipality", "slug": "other"}, "name"),  # taken
    ({"name": "Other", "slug": "acme"}, "slug"),  # taken
])
def test_bad_input_is_422_naming_the_field_and_writes_nothing(client, tenant, super_headers, body, field):
    before = (Tenant.objects.count(), AuditEvent.objects.count())
    r = call(client, "post", BASE, super_headers, body)
    assert r.status_code == 422, r.content
    assert field in r.content.decode()
    assert (Tenant.objects.count(), AuditEvent.objects.count()) == before


def test_members_are_set_and_removed(client, tenant, super_headers):
    user = get_user_model().objects.create_user("anna", password="pw-anna-123")
    url = f"{BASE}/{tenant.pk}/members"
    r = call(client, "put", f"{url}/anna", super_headers, {"role": "admin"})
    assert r.status_code == 200 and r.json() == {"username": "anna", "role": "admin"}
    assert TenantMembership.objects.get(user=user, tenant=tenant).role == "admin"
    assert call(client, "get", url, super_headers).json()["items"] == [{"username": "anna", "role": "admin"}]
    assert call(client, "put", f"{url}/nobody", super_headers, {"role": "member"}).status_code == 404
    assert call(client, "put", f"{url}/anna", super_headers, {"role": "owner"}).status_code == 422
    assert call(client, "delete", f"{url}/anna", super_headers).status_code == 204
    assert call(client, "delete", f"{url}/anna", super_headers).status_code == 204  # idempotent
    assert not TenantMembership.objects.filter(user=user).exists()


def test_tenant_keys_cannot_use_it(client, tenant, super_headers):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="all", scopes=["*"]).plaintext
    for headers in ({"HTTP_AUTHORIZATION": f"Bearer {key}"}, {"HTTP_X_API_KEY": key}, {}):
        assert call(client, "get", BASE, headers).status_code == 401
        assert call(client, "delete", f"{BASE}/{tenant.pk}", headers).status_code == 401
    assert Tenant.objects.filter(pk=tenant.pk).exists()


def test_deactivated_then_deleted_tenant_is_refused_by_the_gateway(gateway, upstream, tenant, super_headers):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    api = httpx.Client(base_url=gateway.url, headers={"X-API-Key": super_headers["HTTP_X_API_KEY"]})
    models = lambda: httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})  # noqa: E731
    assert models().status_code == 200
    assert api.patch(f"{BASE}/{tenant.pk}", json={"is_active": False}).status_code == 200
    assert models().status_code == 401
    assert api.patch(f"{BASE}/{tenant.pk}", json={"is_active": True}).status_code == 200
    assert models().status_code == 200
    assert api.delete(f"{BASE}/{tenant.pk}").status_code == 204
    assert models().status_code == 401


def test_budget_set_by_api_stops_calls(gateway, upstream, tenant, super_headers):
    from .factories import make_model, upstream_provider

    p = upstream_provider(upstream, "openai")
    make_model(p, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    api = httpx.Client(base_url=gateway.url, headers={"X-API-Key": super_headers["HTTP_X_API_KEY"]})
    assert api.patch(f"{BASE}/{tenant.pk}", json={"monthly_budget": "0"}).json()["monthly_budget"] == "0.00"
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert Tenant.objects.get(pk=tenant.pk).monthly_budget == Decimal("0")
    assert upstream.requests == []


def test_budget_in_admin_is_for_sysadmins_only(client, admin_client, django_user_model, tenant):
    from django.contrib.auth.models import Permission

    from .factories import make_user

    url = f"/admin/tenants/tenant/{tenant.pk}/change/"
    form = {"name": tenant.name, "slug": tenant.slug, "is_active": "on", "monthly_budget": "75.50",
            "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
            "credentials-TOTAL_FORMS": "0", "credentials-INITIAL_FORMS": "0"}
    assert admin_client.post(url, form).status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).monthly_budget == Decimal("75.50")

    user = make_user(django_user_model, "tadmin", tenant=tenant, role="admin", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["change_tenant", "view_tenant"]))
    client.force_login(user)
    page = client.get(url).content.decode()
    assert "75.50" in page and 'name="monthly_budget"' not in page  # shown, not editable
    client.post(url, {**form, "monthly_budget": "1000000", "is_active": ""})
    assert Tenant.objects.get(pk=tenant.pk).monthly_budget == Decimal("75.50")
    assert Tenant.objects.get(pk=tenant.pk).is_active


@pytest.mark.parametrize("strict", [False, True], ids=["default inherit", "default own"])
def test_credential_policy_per_tenant(gateway, upstream, tenant, other_tenant, super_headers, settings, strict):
    """own: no credential = a clear error, never the shared key; inherit: the tenant's credential if present, else the
    shared key; a broken credential is an error under both. The instance default follows
    TENANT_CREDENTIALS_ENABLED; each tenant may differ, set by a sysadmin through the API."""
    from credentials.services import credential_set

    from .factories import make_model, make_provider

    settings.TENANT_CREDENTIALS_ENABLED = strict
    p = make_provider(tenant=None, instance_wide=True, name="OpenAI", base_url=upstream.url + "/v1",
                      api_key="sk-shared-instance-key-0001")
    make_model(p, model_id="gpt-4o-mini", alias="fast")
    keys = {t.slug: api_key_create(actor=SYSTEM, tenant=t, name="bot", scopes=["gateway:Use"]).plaintext
            for t in (tenant, other_tenant)}
    api = httpx.Client(base_url=gateway.url, headers={"X-API-Key": super_headers["HTTP_X_API_KEY"]})

    def chat(slug):
        return httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys[slug]}"},
                          json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})

    default = "own" if strict else "inherit"
    assert api.get(f"{BASE}/{tenant.pk}").json()["effective_credential_policy"] == default
    set_policy = {"acme": "inherit" if strict else "own"}  # acme differs from the default, other follows it
    assert api.patch(f"{BASE}/{tenant.pk}", json={"credential_policy": set_policy["acme"]}).json()[
        "effective_credential_policy"] == set_policy["acme"]
    policies = {"acme": set_policy["acme"], "other": default}
    for slug, policy in policies.items():
        r = chat(slug)
        if policy == "own":
            assert r.status_code == 403 and r.json()["error"]["code"] == "credential_missing", r.text
        else:
            assert r.status_code == 200, r.text
    assert upstream.keys_seen().count("sk-shared-instance-key-0001") == 1  # only the inheriting tenant's call

    # with a credential of its own, each tenant uses it; broken, it is an error under both policies
    upstream.reset()
    for t in (tenant, other_tenant):
        credential_set(actor=SYSTEM, tenant=t, provider_type="openai", api_key=f"sk-own-{t.slug}-key-0009")
    assert chat("acme").status_code == 200 and chat("other").status_code == 200
    assert sorted(upstream.keys_seen()) == ["sk-own-acme-key-0009", "sk-own-other-key-0009"]
    from cryptography.fernet import Fernet

    settings.ENCRYPTION_KEY, settings.ENCRYPTION_KEYS_OLD = Fernet.generate_key().decode(), []  # key lost
    upstream.reset()
    for slug in policies:
        r = chat(slug)
        assert r.status_code == 503 and r.json()["error"]["code"] == "credential_undecryptable", r.text
    assert upstream.requests == []

    # back to the instance default
    assert api.patch(f"{BASE}/{tenant.pk}", json={"credential_policy": None}).json()["credential_policy"] is None
    assert Tenant.objects.get(pk=tenant.pk).effective_credential_policy == default
