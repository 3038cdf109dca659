"""The README's walk-through, as an operator does it, in a real Chromium against the live server: log in, add a
tenant, add a provider in the wizard (instance level, shared with the tenant; its models from the server's own
list), test its connection, create an API key (shown once; a reload shows it no more), call a model with the
official openai client (a 200), and see the call on the dashboard and the tenant's page.

With UPDATE_SCREENSHOTS=1 it saves the screenshots the README shows (docs/screenshots/)."""
import re

import openai
import pytest

from providers.models import Provider, TenantModelEnablement
from tenants.models import Tenant, TenantApiKey

from ..conftest import usage_rows
from .conftest import WIDEST, in_browser, login, screenshot

PASSWORD = "pw-walkthrough-admin-123"


@pytest.fixture
def operator_account(gateway, django_user_model):
    django_user_model.objects.create_superuser("admin", "admin@example.org", PASSWORD)


def test_readme_walkthrough_ends_in_a_200_and_on_the_dashboard(gateway, upstream, operator_account, browser_ready):
    base = gateway.url

    def operator_setup(page):
        login(page, base, "admin", PASSWORD)
        screenshot(page, "admin-index-empty")
        # 1. Tenants -> Add
        page.goto(base + "/admin/tenants/tenant/add/")
        page.fill("#id_name", "City of Lund")
        page.fill("#id_slug", "lund")
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
        # 2. Providers -> Add provider: type, instance level, shared with the tenant
        page.goto(base + "/admin/providers/provider/add/")
        page.check("#type-openai")
        page.get_by_label("City of Lund").check()
        page.click("input[name=_next]")
        page.fill("#id_name", "OpenAI (lab)")
        page.fill("#id_api_key", "sk-walkthrough-0001")
        page.fill("#id_base_url", upstream.url + "/v1")
        screenshot(page, "wizard-connection")
        page.click("input[name=_next]")
        page.wait_for_selector("input[name=models]")  # the server's own model list
        page.check("input[name=models][value='gpt-4o-mini']")
        screenshot(page, "wizard-models")
        page.click("input[name=_create]")
        page.wait_for_selector(".messagelist")
        messages = page.inner_text(".messagelist")
        assert "was added with 1 model" in messages and "Connection test" in messages, messages
        # ... and the button on the provider page
        page.get_by_role("button", name=re.compile("Test connection")).first.click()
        page.wait_for_selector(".messagelist")
        screenshot(page, "provider-page")
        # 3. Tenant API keys -> Add, scope gateway:Use; the key is shown once
        page.goto(base + "/admin/tenants/tenantapikey/add/")
        page.select_option("#id_tenant", label="City of Lund")
        page.fill("#id_name", "chat app")
        page.check("input[name=scopes][value='gateway:Use']")
        page.click("input[name=_save]")
        key = page.input_value("#new-api-key")
        shown_at = page.url
        screenshot(page, "api-key-created")
        page.goto(shown_at)  # a reload
        assert page.locator("#new-api-key").count() == 0 and "already shown" in page.content()
        return key

    key = in_browser(operator_setup)
    assert key.startswith("eneo_") and TenantApiKey.objects.count() == 1  # the reload made no second key
    provider = Provider.objects.get(name="OpenAI (lab)")
    assert provider.tenant is None and TenantModelEnablement.objects.filter(
        tenant=Tenant.objects.get(name="City of Lund")).count() == 1

    # 4. Call a model: a 200
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content and answer.model == "gpt-4o-mini"
    assert usage_rows(gateway)[0].status == "ok"

    tenant = Tenant.objects.get(name="City of Lund")

    def operator_review(page):
        login(page, base, "admin", PASSWORD)
        dashboard = page.inner_text("#content")
        screenshot(page, "dashboard")
        assert page.evaluate(WIDEST)["offenders"] == []
        page.goto(f"{base}/admin/tenants/tenant/{tenant.pk}/change/")
        tenant_page = page.inner_text("#content")
        screenshot(page, "tenant-page")
        page.goto(base + "/admin/providers/usagerecord/")
        screenshot(page, "usage")
        return dashboard, tenant_page

    dashboard, tenant_page = in_browser(operator_review)
    assert "City of Lund" in dashboard and "gpt-4o-mini" in dashboard  # the top tenants and models
    assert "chat app" in tenant_page and "gpt-4o-mini" in tenant_page
