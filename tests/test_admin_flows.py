"""The operator's flows in the admin (issue 14): the wizard's sharing ends in a working /v1 call, the tenant page,
the API key shown once (POST, redirect, GET), the two-step credential form with distinct labels, and isolation."""
import re
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from credentials.models import TenantCredential
from credentials.services import credential_set
from providers import services
from providers.models import AIModel, Provider, TenantModelEnablement
from tenants.actors import SYSTEM
from tenants.admin import CREATED_KEYS_SESSION
from tenants.api_keys import api_key_create
from tenants.models import AuditEvent, TenantApiKey

from .conftest import CANARY, openai_client
from .factories import make_model, make_provider, make_user, usage_record_create

WIZARD = "/admin/providers/provider/add/"
KEYS = "/admin/tenants/tenantapikey/"
CREDENTIALS = "/admin/credentials/tenantcredential/"


def tenant_page(tenant) -> str:
    return f"/admin/tenants/tenant/{tenant.pk}/change/"


def run_wizard(client, upstream, *, tenant="", shared_with=(), name="Shared OpenAI", models="gpt-4o-mini"):
    response = client.post(WIZARD, {"provider_type": "openai", "tenant": tenant,
                                    "shared_with": [t.pk for t in shared_with]})
    assert response.status_code == 302, response.context["form"].errors
    response = client.post(WIZARD + "connection/", {"name": name, "base_url": upstream.url + "/v1",
                                                    "api_key": "sk-wizard-shared-0001"})
    assert response.status_code == 302, response.context["form"].errors
    return client.post(WIZARD + "models/", {"extra_models": models})


# --- wizard: owner or instance level + sharing -------------------------------------------------------------

def test_wizard_shares_an_instance_level_provider_and_the_tenant_calls_it(admin_client, gateway, upstream, tenant,
                                                                          other_tenant):
    page = admin_client.get(WIZARD).content.decode()
    assert "Owning tenant" in page and "Shared with tenants" in page and 'name="shared_with"' in page
    response = run_wizard(admin_client, upstream, shared_with=[tenant])
    assert response.status_code == 302, response.context["form"].errors
    provider = Provider.objects.get(name="Shared OpenAI")
    model = AIModel.objects.get(provider=provider, model_id="gpt-4o-mini")
    assert provider.tenant is None and not provider.instance_wide
    assert list(TenantModelEnablement.objects.values_list("model_id", "tenant_id")) == [(model.pk, tenant.pk)]
    assert AuditEvent.objects.filter(action="model.enable", tenant=tenant, source="admin").count() == 1

    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    reply = openai_client(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content and upstream.last_request()["path"] == "/v1/chat/completions"
    assert set(upstream.keys_seen()) == {"sk-wizard-shared-0001"}  # model discovery in the wizard, then the call

    other = api_key_create(actor=SYSTEM, tenant=other_tenant, name="bot", scopes=["gateway:Use"]).plaintext
    with pytest.raises(openai.PermissionDeniedError):  # not shared with this tenant
        openai_client(gateway, other).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])


def test_wizard_tenant_owned_provider_is_usable_by_its_tenant(admin_client, gateway, upstream, tenant):
    response = run_wizard(admin_client, upstream, tenant=tenant.pk, name="Acme OpenAI")
    assert response.status_code == 302, response.context["form"].errors
    assert Provider.objects.get(name="Acme OpenAI").tenant == tenant
    assert not TenantModelEnablement.objects.exists()  # its tenant's own: nothing to enable
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    reply = openai_client(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content


def test_wizard_refuses_sharing_a_tenant_owned_provider(admin_client, tenant, other_tenant):
    response = admin_client.post(WIZARD, {"provider_type": "openai", "tenant": tenant.pk,
                                          "shared_with": [other_tenant.pk]})
    assert response.status_code == 200 and "is not shared with other tenants" in response.content.decode()


def test_tenant_admin_is_not_offered_sharing(client, django_user_model, tenant):
    user = make_user(django_user_model, "tadmin", tenant=tenant, role="admin", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_provider", "view_provider"]))
    client.force_login(user)
    assert 'name="shared_with"' not in client.get(WIZARD).content.decode()


def test_a_failed_enablement_rolls_back_provider_models_and_enablements(admin_client, upstream, tenant,
                                                                        other_tenant, monkeypatch):
    real = services.model_set_tenant_enabled

    def fail_for_other(*, tenant, **kwargs):
        if tenant == other_tenant:
            raise services.ValidationError("Enablement failed.")
        return real(tenant=tenant, **kwargs)

    monkeypatch.setattr(services, "model_set_tenant_enabled", fail_for_other)
    response = run_wizard(admin_client, upstream, shared_with=[tenant, other_tenant], models="m-1\nm-2")
    assert response.status_code == 200 and "Nothing was saved" in response.content.decode()
    assert not Provider.objects.exists() and not AIModel.objects.exists()
    assert not TenantModelEnablement.objects.exists()
    assert not AuditEvent.objects.filter(action__in=["provider.create", "model.create", "model.enable"]).exists()


def test_provider_create_enables_in_one_transaction(tenant, other_tenant):
    provider = services.provider_create(actor=SYSTEM, tenant=None, name="Shared", provider_type="openai",
                                        api_key="sk-shared-1234", models=[{"model_id": "a"}, {"model_id": "b"}],
                                        enable_for_tenants=[tenant, other_tenant])
    assert TenantModelEnablement.objects.filter(model__provider=provider).count() == 4
    with pytest.raises(services.ValidationError):
        services.provider_create(actor=SYSTEM, tenant=tenant, name="Own", provider_type="openai",
                                 models=[{"model_id": "a"}], enable_for_tenants=[other_tenant])
    assert not Provider.objects.filter(name="Own").exists()


# --- the tenant page ---------------------------------------------------------------------------------------

def tenant_with_everything(tenant, django_user_model, n=1):
    for i in range(n):
        make_user(django_user_model, f"member{tenant.slug}{i}", tenant=tenant)
        api_key_create(actor=SYSTEM, tenant=tenant, name=f"bot {i}", scopes=["gateway:Use"])
        shared = make_provider(tenant=None, name=f"Shared {tenant.slug} {i}")
        services.model_set_tenant_enabled(actor=SYSTEM, model=make_model(shared, model_id=f"shared-{i}"),
                                          tenant=tenant, enabled=True)
        make_model(make_provider(tenant=tenant, name=f"Own {tenant.slug} {i}"), model_id=f"own-{i}")
        usage_record_create(tenant=tenant, requested_model=f"own-{i}", endpoint="chat.completions",
                                   tokens_in=10, tokens_out=20, cost=Decimal("0.25"), status="ok",
                                   latency_ms=5, created_at=timezone.now())
    for i, ptype in enumerate(["openai", "anthropic", "groq"][:n]):
        credential_set(actor=SYSTEM, tenant=tenant, provider_type=ptype, api_key=CANARY if i == 0 else f"sk-{i}-99")


def test_tenant_page_shows_members_credentials_keys_models_budget_and_usage(admin_client, tenant,
                                                                           django_user_model):
    tenant.monthly_budget = Decimal("10.00")
    tenant.save()
    tenant_with_everything(tenant, django_user_model)
    usage_record_create(tenant=tenant, requested_model="own-0", endpoint="chat.completions", cost=Decimal(1),
                               status="ok", latency_ms=5, created_at=timezone.now().replace(year=2000))  # not this month
    key = TenantApiKey.objects.get(tenant=tenant)
    page = admin_client.get(tenant_page(tenant)).content.decode()
    assert "membertacme0" in page or "memberacme0" in page  # members (inline)
    assert "...zz91" in page and CANARY not in page and "openai" in page  # credentials, masked
    assert f"eneo_{key.prefix}_..." in page and "bot 0" in page and key.digest not in page  # API keys
    assert "shared-0" in page and "enabled for this tenant" in page and "own-0" in page and "own provider" in page
    assert 'name="monthly_budget"' in page and 'value="10.00"' in page  # editable for superusers
    assert "Usage this month" in page and "0.25" in page and "2.5 %" in page  # spent 0.25 of 10


def test_tenant_page_runs_a_constant_number_of_queries(admin_client, tenant, django_user_model):
    def count():
        admin_client.get(tenant_page(tenant))
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(tenant_page(tenant)).status_code == 200
        return len(ctx.captured_queries)

    tenant_with_everything(tenant, django_user_model, n=1)
    one = count()
    for extra in ("x", "y"):  # more of everything (credentials of other types)
        make_user(django_user_model, f"more{extra}", tenant=tenant)
        api_key_create(actor=SYSTEM, tenant=tenant, name=f"more {extra}", scopes=["gateway:Use"])
        make_model(make_provider(tenant=tenant, name=f"More {extra}"), model_id=f"more-{extra}")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="mistral", api_key="sk-more-1234")
    assert count() == one


def test_tenant_admin_sees_own_tenant_page_and_not_another(client, django_user_model, tenant, other_tenant):
    user = make_user(django_user_model, "tadmin", tenant=tenant, role="admin", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label__in=["tenants", "credentials",
                                                                                    "providers"]))
    tenant_with_everything(other_tenant, django_user_model)
    theirs = TenantCredential.objects.get(tenant=other_tenant)
    client.force_login(user)
    page = client.get(tenant_page(tenant))
    assert page.status_code == 200 and 'name="monthly_budget"' not in page.content.decode()  # superusers only
    assert client.get(tenant_page(other_tenant)).status_code == 404
    assert client.get(f"{CREDENTIALS}{theirs.pk}/change/").status_code == 404
    theirs_key = TenantApiKey.objects.get(tenant=other_tenant)
    assert client.get(f"{KEYS}{theirs_key.pk}/change/").status_code == 404
    step2 = client.get(f"{CREDENTIALS}add/?tenant={other_tenant.pk}&provider_type=openai").content.decode()
    assert "Select a valid choice" in step2 and 'name="api_key_input"' not in step2


# --- API key: POST, redirect, GET once ---------------------------------------------------------------------

def test_api_key_is_shown_once_and_a_reload_creates_nothing(admin_client, tenant):
    response = admin_client.post(f"{KEYS}add/", {"tenant": tenant.pk, "name": "chatbot", "scopes": ["gateway:Use"]})
    assert response.status_code == 302
    shown_at = response["Location"]
    key = TenantApiKey.objects.get()
    session = str(dict(admin_client.session))
    assert CREATED_KEYS_SESSION in session and f"eneo_{key.prefix}_" not in session  # only ciphertext waits

    page = admin_client.get(shown_at).content.decode()
    plaintext = re.search(r'value="(eneo_[^"]+)"', page).group(1)
    assert plaintext.startswith(f"eneo_{key.prefix}_") and "navigator.clipboard" in page and "readonly" in page
    assert plaintext not in str(dict(admin_client.session))

    again = admin_client.get(shown_at)  # the reload: a GET, nothing to re-post
    assert again.status_code == 200 and plaintext not in again.content.decode()
    assert "already shown" in again.content.decode()
    assert TenantApiKey.objects.count() == 1


def test_api_key_token_is_useless_in_another_session(admin_client, client, django_user_model, tenant):
    response = admin_client.post(f"{KEYS}add/", {"tenant": tenant.pk, "name": "chatbot", "scopes": ["gateway:Use"]})
    other = make_user(django_user_model, "tadmin", tenant=tenant, role="admin", is_staff=True)
    other.user_permissions.add(*Permission.objects.filter(content_type__app_label="tenants"))
    client.force_login(other)
    page = client.get(response["Location"]).content.decode()
    assert "already shown" in page and "eneo_" + TenantApiKey.objects.get().prefix + "_" not in page


# --- tenant credential: two steps without JavaScript, distinct labels --------------------------------------

def labels(page: str) -> list[str]:
    start = page.index('id="tenantcredential_form"')
    form = page[start:page.index("</form>", start)]
    return [re.sub(r"<[^>]+>|:$", "", text).strip().lower()
            for text in re.findall(r"<label[^>]*>(.*?)</label>", form, re.S)]


def test_credential_add_is_two_steps_without_javascript(admin_client, tenant):
    step1 = admin_client.get(f"{CREDENTIALS}add/").content.decode()
    assert 'method="get"' in step1 and 'name="tenant"' in step1 and 'name="provider_type"' in step1
    assert 'name="api_key_input"' not in step1 and 'name="deployment_name"' not in step1
    bad = admin_client.get(f"{CREDENTIALS}add/?tenant={tenant.pk}&provider_type=nope").content.decode()
    assert "Select a valid choice" in bad and 'name="api_key_input"' not in bad

    step2 = admin_client.get(f"{CREDENTIALS}add/?tenant={tenant.pk}&provider_type=bedrock").content.decode()
    for name in ("setting__aws_region_name", "setting__aws_access_key_id", "setting__aws_secret_access_key"):
        assert f'name="{name}"' in step2
    assert 'name="extra_input"' not in step2 and 'name="deployment_name"' not in step2
    assert "Change the tenant or type" in step2
    response = admin_client.post(f"{CREDENTIALS}add/?tenant={tenant.pk}&provider_type=bedrock", {
        "tenant": tenant.pk, "provider_type": "openai",  # the type is step 1's: a posted one is ignored
        "setting__aws_region_name": "eu-north-1", "setting__aws_access_key_id": "AKIAEXAMPLE",
        "setting__aws_secret_access_key": CANARY})
    assert response.status_code == 302, response.context["adminform"].form.errors
    cred = TenantCredential.objects.get()
    assert cred.provider_type == "bedrock" and cred.extra.reveal()["aws_secret_access_key"] == CANARY
    assert CANARY not in admin_client.get(f"{CREDENTIALS}{cred.pk}/change/").content.decode()


@pytest.mark.parametrize("ptype", ["openai", "azure", "watsonx", "bedrock", "vertex_ai", "hosted_vllm"])
def test_credential_form_labels_are_unique(admin_client, tenant, ptype):
    add = admin_client.get(f"{CREDENTIALS}add/?tenant={tenant.pk}&provider_type={ptype}").content.decode()
    found = labels(add)
    assert len(found) == len(set(found)) and len(found) >= 3, found
    cred = TenantCredential.objects.create(tenant=tenant, provider_type=ptype, api_key="sk-label-test-1234",
                                           configured_at=timezone.now())
    change = admin_client.get(f"{CREDENTIALS}{cred.pk}/change/").content.decode()
    found = labels(change)
    assert len(found) == len(set(found)), found
    assert "stored key" in found and "api key" not in found[:1]
