"""The tenant page's sections from the catalog: the models the tenant may call and this month's usage against its
budget (tenants.admin.TenantAdmin.page_sections; tenants does not import providers). Reads are selectors."""
from __future__ import annotations

from django.urls import reverse
from django.utils.html import format_html

from tenants.admin import PageSection, TenantAdmin

from providers.choices import ModelStatus, ProviderStatus
from providers.selectors import tenant_model_list, tenant_usage_month


def _why(model, tenant) -> str:
    if model.provider.tenant_id == tenant.pk:
        return "own provider"
    return "enabled for this tenant" if model.enabled_here else "instance-wide"


def models_section(request, tenant) -> PageSection:
    rows = []
    for model in tenant_model_list(tenant=tenant):
        usable = model.status == ModelStatus.ACTIVE and model.provider.status == ProviderStatus.ACTIVE
        rows.append([
            format_html('<a href="{}">{}</a>', reverse("admin:providers_aimodel_change", args=[model.pk]),
                        model.model_id),
            model.alias or "-", model.provider.name, model.get_model_type_display(), _why(model, tenant),
            "active" if usable else "inactive (not offered)",
        ])
    return PageSection(
        title="Models this tenant may call", headers=("Model", "Alias", "Provider", "Type", "Why", "Status"),
        rows=rows, section_id="tenant-models",
        empty="None: add a provider owned by this tenant, or enable instance-level models for it (AI models → "
              "action 'Enable for a tenant...').",
        links=((reverse("admin:providers_aimodel_changelist"), "AI models"),))


def _money(value) -> str:
    return format(value.normalize(), "f") if value else "0"  # 0.25000000 -> 0.25, 0E-8 -> 0


def usage_section(request, tenant) -> PageSection:
    usage = tenant_usage_month(tenant=tenant)
    if usage["budget"] is None:
        budget = "no monthly budget"
    else:
        budget = f"{_money(usage['budget'])} (spent {usage['percent']} %, {_money(usage['remaining'])} left)"
    url = reverse("admin:providers_usagerecord_changelist")
    return PageSection(
        title=f"Usage this month (since {usage['since']:%Y-%m-%d} UTC)", headers=(), rows=[],
        section_id="tenant-usage",
        facts=(("Calls", str(usage["calls"])), ("Errors", str(usage["errors"])),
               ("Tokens in / out", f"{usage['tokens_in']} / {usage['tokens_out']}"),
               ("Spent", _money(usage["spent"])), ("Monthly budget", budget)),
        links=((f"{url}?tenant__id__exact={tenant.pk}", "This tenant's usage records"),))


TenantAdmin.page_sections = [*TenantAdmin.page_sections, models_section, usage_section]
