"""Every admin page of ours fits a 1280 px wide screen: no element reaches past the viewport's right edge (wide
tables scroll inside their own box or truncate), checked in a real Chromium with long names, many models and
many usage rows."""
import pytest
from django.utils import timezone
from django.contrib import admin
from django.urls import reverse

from providers import services
from providers.models import UsageRecord
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.services import tenant_create

from ..factories import make_model, make_provider
from .conftest import WIDEST, in_browser, login, screenshot

OUR_APPS = ("providers", "tenants", "credentials")
PASSWORD = "pw-layout-operator-123"


@pytest.fixture
def crowded(gateway, django_user_model):
    """Data with long values everywhere a column could grow."""
    from credentials.services import credential_set

    django_user_model.objects.create_superuser("layout", "layout@example.org", PASSWORD)
    tenant = tenant_create(actor=SYSTEM, name="Region of Västra Götaland, Department of Digital Services " * 2,
                           slug="vgregion-digital-services-department")
    provider = make_provider(tenant=None, instance_wide=True, name="Azure OpenAI Sweden Central production " * 3,
                             provider_type="azure", base_url="https://very-long-resource-name-for-testing.openai."
                             "azure.com", api_version="2024-10-21-preview")
    for n in range(12):
        make_model(provider, model_id=f"gpt-4o-2024-11-20-deployment-with-a-long-name-{n:02d}",
                   display_label=f"GPT-4o production deployment number {n} for the municipality", alias="gpt-4o")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-layout-test-0000111122223333",
                   endpoint="https://a-rather-long-endpoint-name.example.org/openai/v1/with/a/path")
    api_key_create(actor=SYSTEM, tenant=tenant, name="Integration key for the case-management system " * 2,
                   scopes=["gateway:Use", "usage:ReadUsage", "aiProviders:ListAiProviders"])
    model = provider.models.first()
    UsageRecord.objects.bulk_create([UsageRecord(
        tenant=tenant, requested_model="gpt-4o-2024-11-20-deployment-with-a-long-name-00-requested-by-alias",
        model=model, provider=provider, endpoint="chat.completions", tokens_in=1234, tokens_out=567,
        status="error" if n % 7 == 0 else "ok", http_status=502 if n % 7 == 0 else 200,
        error_type="upstream_error" if n % 7 == 0 else "", latency_ms=800 + n,
        request_id=f"req-{n:032d}", created_at=timezone.now()) for n in range(60)])
    services.provider_update(actor=SYSTEM, provider=provider, rpm=600)  # an audit row with a wide diff
    return provider


def _pages(provider) -> list[str]:
    urls = ["/admin/"]
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        if meta.app_label not in OUR_APPS:
            continue
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        first = model.objects.order_by("pk").first()
        if first is not None:
            urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[first.pk]))
    urls.append(reverse("admin:providers_provider_change", args=[provider.pk]))
    return list(dict.fromkeys(urls))


def test_every_admin_page_fits_1280_px(crowded, gateway, browser_ready):
    pages = _pages(crowded)

    def script(page):
        login(page, gateway.url, "layout", PASSWORD)
        problems = {}
        for url in pages:
            response = page.goto(gateway.url + url)
            assert response.status == 200, (url, response.status)
            found = page.evaluate(WIDEST)
            if found["scrollWidth"] > found["limit"] or found["offenders"]:
                problems[url] = found
            if url == "/admin/":
                screenshot(page, "dashboard")
        return problems

    problems = in_browser(script)
    assert problems == {}, problems
