import pytest

from credentials.models import TenantCredential
from credentials.services import credential_set
from tenants.actors import SYSTEM
from tenants.models import AuditEvent, Tenant

from .conftest import CANARY

ADD = "/admin/credentials/tenantcredential/add/"


def test_anonymous_and_non_staff_are_sent_to_login(client, django_user_model, tenant):
    assert client.get(ADD).status_code == 302
    user = django_user_model.objects.create_user("plain", password="pw-plain-123")
    client.force_login(user)
    assert client.get(ADD)["Location"].startswith("/admin/login/")


def test_staff_without_permission_is_forbidden(client, django_user_model, tenant):
    staff = django_user_model.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    client.force_login(staff)
    assert client.get(ADD).status_code == 403
    assert client.get("/admin/credentials/tenantcredential/").status_code == 403


def add_url(tenant, provider_type):
    return f"{ADD}?tenant={tenant.pk}&provider_type={provider_type}"


def test_add_form_shows_the_fields_of_the_chosen_type(admin_client, tenant):
    page = admin_client.get(ADD).content.decode()  # step 1: tenant and type only
    assert 'name="provider_type"' in page and 'name="api_key_input"' not in page and 'method="get"' in page
    page = admin_client.get(add_url(tenant, "azure")).content.decode()
    assert 'type="password"' in page and "Write-only" in page
    for name in ("endpoint", "api_version", "deployment_name", "setting__azure_ad_token"):
        assert f'name="{name}"' in page, name
    page = admin_client.get(add_url(tenant, "openai")).content.decode()
    assert 'name="deployment_name"' not in page and 'name="setting__organization"' in page


def test_add_azure_missing_fields_shows_errors_and_saves_nothing(admin_client, tenant):
    r = admin_client.post(add_url(tenant, "azure"), {"tenant": tenant.pk, "api_key_input": "azure-key-123456"})
    assert r.status_code == 200
    errors = r.context["adminform"].form.errors
    assert set(errors) == {"endpoint", "api_version", "deployment_name"}
    assert "azure-key-123456" not in r.content.decode()  # the secret is not rendered back
    assert not TenantCredential.objects.exists()


def test_add_and_edit_keeps_secret_write_only(admin_client, tenant):
    r = admin_client.post(add_url(tenant, "openai"), {"tenant": tenant.pk, "api_key_input": CANARY,
                                                      "endpoint": "https://api.example.org/v1"})
    assert r.status_code == 302, r.context["adminform"].form.errors if r.context else r
    cred = TenantCredential.objects.get()
    assert cred.provider_type == "openai" and cred.api_key.reveal() == CANARY
    change_url = f"/admin/credentials/tenantcredential/{cred.pk}/change/"
    page = admin_client.get(change_url).content.decode()
    assert CANARY not in page and "...zz91" in page and "encrypted" in page

    # A blank key field keeps the stored key (no masked value ever round-trips into storage).
    r = admin_client.post(change_url, {"api_key_input": "", "endpoint": "https://api2.example.org/v1"})
    assert r.status_code == 302, r.context["adminform"].form.errors
    cred.refresh_from_db()
    assert cred.api_key.reveal() == CANARY and cred.endpoint == "https://api2.example.org/v1"
    # A new key replaces it.
    admin_client.post(change_url, {"api_key_input": "sk-replacement-key-7777", "endpoint": ""})
    cred.refresh_from_db()
    assert cred.api_key.reveal() == "sk-replacement-key-7777"
    assert AuditEvent.objects.filter(action="credential.replace", source="admin", actor="operator").count() == 2
    last = AuditEvent.objects.filter(action="credential.replace").first()
    assert last.changes["after"]["api_key"] == "***CHANGED***"


def test_extra_settings_are_write_only(admin_client, tenant):
    admin_client.post(add_url(tenant, "openai"), {"tenant": tenant.pk, "api_key_input": "sk-abc-123456",
                                                  "setting__organization": "org-hidden-42"})
    cred = TenantCredential.objects.get()
    assert cred.extra.reveal() == {"organization": "org-hidden-42"}
    page = admin_client.get(f"/admin/credentials/tenantcredential/{cred.pk}/change/").content.decode()
    assert 'value="org-hidden-42"' in page  # not a secret: shown in its own field
    admin_client.post(add_url(tenant, "bedrock"), {
        "tenant": tenant.pk, "setting__aws_region_name": "eu-north-1", "setting__aws_access_key_id": "AKIAEXAMPLE",
        "setting__aws_secret_access_key": CANARY})
    cred = TenantCredential.objects.get(provider_type="bedrock")
    change_url = f"/admin/credentials/tenantcredential/{cred.pk}/change/"
    page = admin_client.get(change_url).content.decode()
    assert CANARY not in page and 'value="eu-north-1"' in page and "id_setting__aws_secret_access_key" in page
    r = admin_client.post(change_url, {"setting__aws_region_name": "eu-west-1", "setting__aws_access_key_id":
                                       "AKIAEXAMPLE"})  # the secret left blank: kept
    assert r.status_code == 302, r.context["adminform"].form.errors
    cred.refresh_from_db()
    assert cred.extra.reveal() == {"aws_region_name": "eu-west-1", "aws_access_key_id": "AKIAEXAMPLE",
                                   "aws_secret_access_key": CANARY}
    r = admin_client.post(change_url, {"setting__aws_region_name": "eu-west-1", "setting__aws_profile_name": "prod",
                                       "setting__aws_access_key_id": "AKIAEXAMPLE"})
    assert r.status_code == 200 and "Only a sysadmin can set this" in r.content.decode()
    r = admin_client.post(add_url(tenant, "vertex_ai"), {
        "tenant": tenant.pk, "setting__vertex_project": "p", "setting__vertex_location": "europe-north1",
        "setting__vertex_credentials": "[1, 2]"})
    assert "Must be a JSON object" in r.content.decode()


def test_filtering_on_secret_columns_is_blocked(admin_client, tenant):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-abc-123456")
    r = admin_client.get("/admin/credentials/tenantcredential/?api_key__startswith=enc")
    assert r.status_code in (302, 400)


def test_delete_through_admin_is_audited(admin_client, tenant):
    cred = credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-abc-123456")
    r = admin_client.post(f"/admin/credentials/tenantcredential/{cred.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302 and not TenantCredential.objects.exists()
    assert AuditEvent.objects.filter(action="credential.delete", source="admin").exists()


def test_tenant_admin_lists_credentials_masked(admin_client, tenant):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-abc-123456")
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/").content.decode()
    assert "...3456" in page and "sk-abc-123456" not in page and "encrypted" in page


def test_create_tenant_in_admin_goes_through_service(admin_client):
    r = admin_client.post("/admin/tenants/tenant/add/", {
        "name": "New Town", "slug": "new-town", "is_active": "on",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "credentials-TOTAL_FORMS": "0", "credentials-INITIAL_FORMS": "0",
    })
    assert r.status_code == 302, r.content.decode()[:2000]
    tenant = Tenant.objects.get(slug="new-town")
    assert AuditEvent.objects.filter(action="tenant.create", tenant=tenant, actor="operator").exists()


@pytest.mark.parametrize("url", ["/admin/tenants/auditevent/add/"])
def test_audit_log_is_append_only(admin_client, url):
    assert admin_client.get(url).status_code == 403
