"""Admin of providers, models and tenant API keys: permissions, service writes, secrets, query counts."""
import socket

import pytest
from django import forms
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from credentials import crypto
from credentials.fields import Sealed
from providers import services
from providers.models import (AIModel, AIModelUserObjectPermission, Provider, ProviderCheck, ProviderKey,
                              ProviderUserObjectPermission, TenantModelEnablement)
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_check
from tenants.models import AuditEvent, TenantApiKey

from .conftest import CANARY
from .factories import make_model, make_provider, make_user

LIST = "/admin/providers/provider/"
MODELS = "/admin/providers/aimodel/"
KEYS = "/admin/tenants/tenantapikey/"


def change_url(provider):
    return f"{LIST}{provider.pk}/change/"


def staff(django_user_model, username, *perms, tenant=None, role="member"):
    user = make_user(django_user_model, username, tenant=tenant, role=role, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def change_form_data(response) -> dict:
    """The POST data a browser would send back unchanged from an admin change page (main form and inlines)."""
    data = {}

    def put(form):
        for name, field in form.fields.items():
            value = form[name].value()
            if isinstance(field, forms.BooleanField):
                if value:
                    data[form.add_prefix(name)] = "on"
            elif isinstance(value, (list, tuple)):
                data[form.add_prefix(name)] = list(value)
            elif value is not None:
                data[form.add_prefix(name)] = value

    put(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        put(inline.formset.management_form)
        for form in inline.formset.forms:
            put(form)
    return data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- access ------------------------------------------------------------------------------------------------

def test_anonymous_is_sent_to_login(client):
    for url in (LIST, MODELS, f"{LIST}add/", KEYS):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_staff_without_permission_is_forbidden(client, django_user_model, tenant):
    provider = make_provider(tenant=tenant)
    client.force_login(staff(django_user_model, "nobody", tenant=tenant, role="admin"))
    for url in (LIST, MODELS, f"{LIST}add/", change_url(provider), KEYS):
        assert client.get(url).status_code == 403, url


def test_shared_provider_is_visible_to_the_grantee_only(admin_client, django_user_model):
    provider = make_provider(name="Shared one")
    grantee = staff(django_user_model, "grantee", "view_provider")
    other = staff(django_user_model, "other", "view_provider")
    response = admin_client.post(LIST, {"action": "share_selected", "_selected_action": [provider.pk]})
    assert response.status_code == 200 and "Give the chosen user or group a role" in response.content.decode()
    response = admin_client.post(LIST, {"action": "share_selected", "_selected_action": [provider.pk],
                                        "apply": "1", "user": grantee.pk, "role": "viewer"})
    assert response.status_code == 302
    assert ProviderUserObjectPermission.objects.filter(user=grantee, content_object=provider).exists()
    assert "grantee" in admin_client.get(change_url(provider)).content.decode()  # listed under grants

    as_grantee, as_other = logged_in(grantee), logged_in(other)
    assert "Shared one" in as_grantee.get(LIST).content.decode()
    page = as_grantee.get(change_url(provider))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()  # a viewer may not change
    assert as_grantee.post(f"{LIST}{provider.pk}/test/").status_code == 403

    assert "Shared one" not in as_other.get(LIST).content.decode()
    assert as_other.get(change_url(provider)).status_code == 404
    assert as_other.get(f"{LIST}{provider.pk}/delete/").status_code == 404

    # Revoke from the change page's grant list.
    admin_client.post(f"{LIST}{provider.pk}/revoke/", {"user": grantee.pk, "apply": "1"})
    assert as_grantee.get(change_url(provider)).status_code == 404


def test_share_needs_share_permission_and_a_tenant_member(admin_client, django_user_model, tenant):
    provider = make_provider(tenant=tenant, name="Tenant one")
    outsider = staff(django_user_model, "outsider", "view_provider")
    response = admin_client.post(f"{LIST}{provider.pk}/share/", {"apply": "1", "user": outsider.pk,
                                                                 "role": "editor"}, follow=True)
    assert "is not a member of the object" in response.content.decode()
    assert not ProviderUserObjectPermission.objects.exists()

    editor = staff(django_user_model, "editor", "view_provider", tenant=tenant)
    services.acl_grant(actor=SYSTEM, obj=provider, grantee=editor, role="editor")
    response = logged_in(editor).post(LIST, {"action": "share_selected", "_selected_action": [provider.pk],
                                             "apply": "1", "user": editor.pk, "role": "owner"}, follow=True)
    assert "You may not share: Tenant one" in response.content.decode()
    assert not editor.has_perm("providers.delete_provider", provider)


# --- list pages ----------------------------------------------------------------------------------------

def test_list_shows_health_models_and_masked_key(admin_client, tenant):
    provider = make_provider(tenant=tenant, name="Listed", api_key="sk-list-key-abcd")
    make_model(provider)
    make_model(provider)
    Provider.objects.filter(pk=provider.pk).update(health_status="healthy", health_latency_ms=42)
    page = admin_client.get(LIST).content.decode()
    assert "...abcd" in page and "sk-list-key-abcd" not in page
    assert "Healthy" in page and "42 ms" in page and "Acme Municipality" in page
    assert '<td class="field-model_count">2</td>' in page


def _bulk_providers(count, *, grantee=None):
    providers = Provider.objects.bulk_create(
        [Provider(name=f"Bulk {i:04d}", provider_type="openai") for i in range(count)])
    secret = Sealed(crypto.encrypt("sk-bulk-key-0000"))
    ProviderKey.objects.bulk_create([ProviderKey(provider=p, secret=secret, last4="0000") for p in providers])
    models = AIModel.objects.bulk_create(
        [AIModel(provider=p, model_id=f"m-{i}", alias="bulk") for i, p in enumerate(providers)])
    if grantee is not None:
        view_provider = Permission.objects.get(codename="view_provider")
        view_model = Permission.objects.get(codename="view_aimodel")
        ProviderUserObjectPermission.objects.bulk_create([
            ProviderUserObjectPermission(user=grantee, permission=view_provider, content_object=p) for p in providers])
        AIModelUserObjectPermission.objects.bulk_create([
            AIModelUserObjectPermission(user=grantee, permission=view_model, content_object=m) for m in models])


def _count_queries(client, url, marker):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200 and marker in response.content.decode()
    return len(queries)


@pytest.mark.parametrize("as_staff", [False, True])
def test_list_pages_run_a_constant_number_of_queries(client, operator, django_user_model, as_staff):
    user = staff(django_user_model, "viewer", "view_provider", "view_aimodel") if as_staff else operator
    client.force_login(user)
    _bulk_providers(5, grantee=user if as_staff else None)
    few = (_count_queries(client, LIST, "Bulk 0004"), _count_queries(client, MODELS, "m-4"))
    Provider.objects.all().delete()
    _bulk_providers(500, grantee=user if as_staff else None)
    many = (_count_queries(client, LIST, "Bulk 0099"), _count_queries(client, MODELS, "m-99"))
    assert few == many


# --- change page: edits, keys, models ----------------------------------------------------------------

def test_edit_goes_through_the_service_and_settings_follow_the_type(admin_client, tenant):
    """The type's settings (from LiteLLM's field catalog) are fields of their own: secret ones write-only."""
    secret = "aws-secret-canary-0123456789"
    provider = make_provider(tenant=tenant, name="Before", provider_type="bedrock", api_key=None,
                             config={"aws_region_name": "eu-north-1"})
    data = change_form_data(admin_client.get(change_url(provider)))
    data.update({"name": "After", "setting__aws_access_key_id": "AKIAEXAMPLE1", "setting__aws_secret_access_key":
                 secret, "capability_flags": ["vision", "tools"]})
    response = admin_client.post(change_url(provider), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.name == "After" and provider.config.reveal() == {
        "aws_region_name": "eu-north-1", "aws_access_key_id": "AKIAEXAMPLE1", "aws_secret_access_key": secret}
    assert provider.capabilities["vision"] and not provider.capabilities["reasoning"]
    event = AuditEvent.objects.filter(action="provider.update", source="admin").get()
    assert event.changes["name"] == ["Before", "After"] and event.changes["config"][1] == "***CHANGED***"
    page = admin_client.get(change_url(provider)).content.decode()
    assert secret not in page and 'value="eu-north-1"' in page and 'value="AKIAEXAMPLE1"' not in page

    data = change_form_data(admin_client.get(change_url(provider)))  # a blank secret field keeps the stored one
    data["base_url"] = "not a url"
    response = admin_client.post(change_url(provider), data)
    assert response.status_code == 200 and "Enter a valid http(s) URL" in response.content.decode()
    data["base_url"] = ""
    data["setting__aws_region_name"] = ""
    response = admin_client.post(change_url(provider), data)
    assert response.context["adminform"].form.errors == {
        "setting__aws_region_name": ["AWS Region Name is required for AWS Bedrock."]}
    data["setting__aws_region_name"] = "eu-north-1"
    data["setting__aws_profile_name"] = "prod"  # the server's own identity: never on a tenant's provider
    response = admin_client.post(change_url(provider), data)
    assert "Only a sysadmin can set this" in str(response.context["adminform"].form.errors)
    del data["setting__aws_profile_name"]
    make_provider(tenant=tenant, name="Taken")
    data["name"] = "Taken"
    response = admin_client.post(change_url(provider), data)
    assert response.context["adminform"].form.errors == {
        "name": ["A provider named 'Taken' already exists in this tenant."]}
    data["name"] = "After"
    assert admin_client.post(change_url(provider), data).status_code == 302
    provider.refresh_from_db()
    assert provider.config.reveal()["aws_secret_access_key"] == secret


def test_key_rotation_in_the_inline(admin_client):
    provider = make_provider(api_key="sk-old-key-1111")
    old = provider.keys.get()
    data = change_form_data(admin_client.get(change_url(provider)))
    assert data["keys-TOTAL_FORMS"] == 1
    data.update({"keys-TOTAL_FORMS": 2, "keys-1-label": "new", "keys-1-new_secret": "sk-new-key-2222",
                 "keys-1-is_active": "on"})
    data.pop("keys-0-is_active")  # untick the old key
    response = admin_client.post(change_url(provider), data)
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    old.refresh_from_db()
    assert not old.is_active
    assert services.provider_credential(provider=provider, tenant=None).api_key == "sk-new-key-2222"
    actions = set(AuditEvent.objects.filter(source="admin").values_list("action", flat=True))
    assert {"provider_key.add", "provider_key.disable"} <= actions
    page = admin_client.get(change_url(provider)).content.decode()
    assert "...2222" in page and "sk-new-key-2222" not in page

    # A new row without a key is an error on that row, not a 500; deleting a key goes through the service.
    data = change_form_data(admin_client.get(change_url(provider)))
    data.update({"keys-TOTAL_FORMS": 3, "keys-2-label": "forgot the key", "keys-2-is_active": "on"})
    response = admin_client.post(change_url(provider), data)
    assert response.status_code == 200 and "Paste the new key" in response.content.decode()
    data.update({"keys-TOTAL_FORMS": 2, "keys-1-DELETE": "on"})
    assert admin_client.post(change_url(provider), data).status_code == 302
    assert AuditEvent.objects.filter(action="provider_key.delete").count() == 1


def test_models_inline_uses_the_services(admin_client):
    provider = make_provider()
    kept = make_model(provider, model_id="kept")
    gone = make_model(provider, model_id="gone")
    data = change_form_data(admin_client.get(change_url(provider)))
    forms_by_id = {data[f"models-{i}-model_id"]: i for i in range(2)}
    data[f"models-{forms_by_id['kept']}-alias"] = "fast"
    data[f"models-{forms_by_id['gone']}-DELETE"] = "on"
    data.update({"models-TOTAL_FORMS": 3, "models-2-model_id": "gpt-4o-mini", "models-2-model_type": "inference",
                 "models-2-status": "active", "models-2-instance_wide": "on"})
    response = admin_client.post(change_url(provider), data)
    assert response.status_code == 302, response.context["inline_admin_formsets"][1].formset.errors
    kept.refresh_from_db()
    assert kept.alias == "fast" and not AIModel.objects.filter(pk=gone.pk).exists()
    added = provider.models.get(model_id="gpt-4o-mini")
    assert added.context_window == 128000  # filled from LiteLLM's registry by model_create
    actions = list(AuditEvent.objects.filter(source="admin").values_list("action", flat=True))
    assert sorted(actions) == ["model.create", "model.delete", "model.update"]


def test_delete_with_models_shows_the_conflict_and_offers_force(admin_client):
    provider = make_provider(name="Busy")
    make_model(provider)
    url = f"{LIST}{provider.pk}/delete/"
    assert 'name="force"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"post": "yes"}, follow=True)
    assert "still has 1 model(s)" in response.content.decode()
    assert Provider.objects.filter(pk=provider.pk).exists()
    response = admin_client.post(url, {"post": "yes", "force": "on"})
    assert response.status_code == 302 and not Provider.objects.filter(pk=provider.pk).exists()
    assert AuditEvent.objects.filter(action="provider.delete", source="admin").get().changes["models_deleted"] == 1


def test_test_button_reports_a_closed_port(admin_client, settings, django_capture_on_commit_callbacks):
    settings.PROVIDER_TEST_TIMEOUT = 2
    provider = make_provider(base_url=f"http://127.0.0.1:{closed_port()}/v1", provider_type="hosted_vllm")
    model = make_model(provider, model_id="served-model")
    assert admin_client.get(f"{LIST}{provider.pk}/test/").status_code == 405
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = admin_client.post(f"{LIST}{provider.pk}/test/", follow=True)
    page = response.content.decode()
    assert "queued" in page and '<meta http-equiv="refresh"' in page  # shown while the task runs
    for callback in queued:
        callback()  # the task runs (eagerly in tests; on a worker in production)
    page = admin_client.get(f"{LIST}{provider.pk}/change/").content.decode()
    assert "Could not connect to the API" in page and "Last checks" in page and 'http-equiv="refresh"' not in page
    check = ProviderCheck.objects.get(provider=provider, kind="test")
    assert not check.ok
    provider.refresh_from_db()
    assert provider.health_status == "down" and provider.health_error == "Could not connect to the API"

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"{LIST}{provider.pk}/validate-model/", {"model": model.pk})
    page = admin_client.get(f"{LIST}{provider.pk}/change/").content.decode()
    assert "Model validation" in page and page.count("Could not connect to the API") >= 2
    assert ProviderCheck.objects.filter(model=model, kind="validate").count() == 1


def test_lookups_on_secret_columns_are_blocked(admin_client):
    make_provider()
    for url in (f"{LIST}?config__isnull=False", f"{LIST}?keys__secret__startswith=enc",
                f"{MODELS}?model_config__isnull=True", f"{MODELS}?provider__keys__secret__startswith=enc"):
        assert admin_client.get(url).status_code == 400, url


def test_canary_key_from_the_inline_appears_on_no_page(admin_client, tenant):
    provider = make_provider(tenant=tenant)
    make_model(provider)
    data = change_form_data(admin_client.get(change_url(provider)))
    data.update({"keys-TOTAL_FORMS": 2, "keys-1-new_secret": CANARY, "keys-1-is_active": "on"})
    response = admin_client.post(change_url(provider), data, follow=True)
    assert response.status_code == 200
    pages = [response]
    pages += [admin_client.get(url) for url in (
        LIST, change_url(provider), f"{LIST}{provider.pk}/history/", f"{LIST}{provider.pk}/delete/", MODELS,
        "/admin/tenants/auditevent/", f"/admin/tenants/tenant/{tenant.pk}/change/")]
    for page in pages:
        assert page.status_code == 200
        assert CANARY not in page.content.decode() and CANARY[3:-4] not in page.content.decode()
    assert "...zz91" in pages[2].content.decode()


# --- AI models ----------------------------------------------------------------------------------------

def test_model_list_filters_and_search(admin_client):
    openai = make_provider(name="OpenAI main")
    vllm = make_provider(name="GPU box", provider_type="hosted_vllm", base_url="http://gpu.internal:8000/v1")
    make_model(openai, model_id="gpt-4o-mini", alias="fast")
    make_model(vllm, model_id="llama-3-8b", alias="fast")
    make_model(vllm, model_id="bge-m3", alias="embed", model_type="embedding")
    page = admin_client.get(MODELS).content.decode()
    assert "fast (2)" in page and "embed (1)" in page and "vLLM (self-hosted)" in page
    assert "vision, tools" in page  # gpt-4o-mini's registry flags
    page = admin_client.get(f"{MODELS}?alias=fast&provider_type=hosted_vllm").content.decode()
    assert "llama-3-8b" in page and "gpt-4o-mini" not in page and "bge-m3" not in page
    page = admin_client.get(f"{MODELS}?q=bge").content.decode()
    assert "bge-m3" in page and "llama-3-8b" not in page


def test_model_change_keeps_config_write_only(admin_client):
    model = make_model(make_provider(), model_id="configured", model_config={"temperature": 0.1, "seed": 4242})
    url = f"{MODELS}{model.pk}/change/"
    page = admin_client.get(url)
    assert "4242" not in page.content.decode()
    data = change_form_data(page)
    data["display_label"] = "Configured model"
    assert admin_client.post(url, data).status_code == 302
    model.refresh_from_db()
    assert model.display_label == "Configured model" and model.model_config.reveal()["seed"] == 4242
    data["model_config_input"] = "[1]"
    assert "Must be a JSON object" in admin_client.post(url, data).content.decode()


def test_model_add_validate_and_enable_for_tenant(admin_client, tenant, settings, django_capture_on_commit_callbacks):
    settings.PROVIDER_TEST_TIMEOUT = 2
    provider = make_provider(base_url=f"http://127.0.0.1:{closed_port()}/v1", provider_type="hosted_vllm")
    response = admin_client.post(f"{MODELS}add/", {
        "provider": provider.pk, "model_id": "added-here", "model_type": "inference", "status": "active",
        "instance_wide": "on", "supports_system_prompt": "on", "supports_streaming": "on",
        "model_config_input": '{"top_p": 0.5}'})
    assert response.status_code == 302, response.context["adminform"].form.errors
    model = AIModel.objects.get(model_id="added-here")
    assert model.model_config.reveal() == {"top_p": 0.5}
    assert AuditEvent.objects.filter(action="model.create", source="admin").exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(MODELS, {"action": "validate_selected", "_selected_action": [model.pk]},
                                     follow=True)
    assert "queued" in response.content.decode()
    assert ProviderCheck.objects.get(model=model, kind="validate").message == "Could not connect to the API"

    response = admin_client.post(MODELS, {"action": "enable_for_tenant", "_selected_action": [model.pk]})
    assert response.status_code == 200 and "Acme Municipality" in response.content.decode()
    admin_client.post(MODELS, {"action": "enable_for_tenant", "_selected_action": [model.pk], "apply": "1",
                               "tenant": tenant.pk, "enabled": "1"})
    assert TenantModelEnablement.objects.filter(model=model, tenant=tenant).exists()
    assert "Acme Municipality" in admin_client.get(f"{MODELS}{model.pk}/change/").content.decode()
    admin_client.post(MODELS, {"action": "enable_for_tenant", "_selected_action": [model.pk], "apply": "1",
                               "tenant": tenant.pk, "enabled": "0"})
    assert not TenantModelEnablement.objects.exists()


# --- tenant API keys -------------------------------------------------------------------------------------

def test_api_key_is_shown_once_and_revoked_by_action(admin_client, tenant):
    response = admin_client.post(f"{KEYS}add/", {"tenant": tenant.pk, "name": "old", "scopes": ["*"],
                                                 "expires_at_0": "2000-01-01", "expires_at_1": "00:00:00"})
    assert "must be in the future" in response.content.decode() and not TenantApiKey.objects.exists()
    response = admin_client.post(f"{KEYS}add/", {"tenant": tenant.pk, "name": "intranet bot",
                                                 "scopes": ["aiProviders:ListAiProviders", "gateway:Use"]})
    assert response.status_code == 302 and response["Location"].startswith(f"{KEYS}created/?token=")
    assert str(TenantApiKey.objects.get().prefix) not in str(dict(admin_client.session))  # only ciphertext waits
    response = admin_client.get(response["Location"])
    page = response.content.decode()
    key = TenantApiKey.objects.get()
    start = page.index(f"eneo_{key.prefix}_")
    plaintext = page[start:page.index('"', start)]
    assert api_key_check(plaintext) == key and key.scopes == ["aiProviders:ListAiProviders", "gateway:Use"]
    assert plaintext not in str(dict(admin_client.session)) and plaintext not in str(response.cookies)
    listing = admin_client.get(KEYS).content.decode()
    assert plaintext not in listing and key.digest not in listing and f"eneo_{key.prefix}_..." in listing
    assert key.digest not in admin_client.get(f"{KEYS}{key.pk}/change/").content.decode()
    assert admin_client.get(f"{KEYS}?digest__startswith=a").status_code == 400

    admin_client.post(KEYS, {"action": "revoke_selected", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert not key.is_active and api_key_check(plaintext) is None
    assert AuditEvent.objects.filter(action="api_key.revoke", source="admin").exists()


def test_every_admin_form_field_has_help_text(admin_client, tenant):
    provider = make_provider(tenant=tenant)
    model = make_model(provider)
    pages = [admin_client.get(change_url(provider)), admin_client.get(f"{MODELS}{model.pk}/change/"),
             admin_client.get(f"{MODELS}add/"), admin_client.get(f"{KEYS}add/")]
    for page in pages:
        form = page.context["adminform"].form
        missing = [name for name, field in form.fields.items() if not field.help_text]
        for inline in page.context["inline_admin_formsets"]:
            missing += [f"{inline.formset.prefix}.{name}" for name, field in inline.formset.form.base_fields.items()
                        if not field.help_text]
        assert not missing, (page.request["PATH_INFO"], missing)
