"""The admin site: the index is the operator's dashboard, and the app list is ordered for operators.

Installed as `admin.site` through EneoAdminConfig.default_site (INSTALLED_APPS), so every `@admin.register` keeps
working. Sections first: providers and models, tenants, usage and audit; then any other app as Django lists it;
users, groups, login throttling (axes) and periodic-task schedules last, under "System settings".
"""
from __future__ import annotations

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig

# (section label, title, models in order). A model registered later that no section names keeps its own app.
SECTIONS = (
    ("providers", "Providers and models", ("providers.Provider", "providers.AIModel", "credentials.TenantCredential")),
    ("tenants", "Tenants", ("tenants.Tenant", "tenants.TenantApiKey")),
    ("activity", "Usage and audit", ("providers.UsageRecord", "tenants.AuditEvent")),
)
SYSTEM_APPS = ("auth", "axes", "django_celery_beat")  # whole apps, in this order
SYSTEM_SECTION = ("system", "System settings")


class EneoAdminSite(AdminSite):
    def get_app_list(self, request, app_label=None):
        app_list = super().get_app_list(request, app_label)
        if app_label is not None:
            return app_list  # one app's own page: as Django builds it
        return order_for_operators(app_list)

    def index(self, request, extra_context=None):
        from providers.admin.dashboard import dashboard_context

        return super().index(request, {**dashboard_context(request, self), **(extra_context or {})})


def _section(label: str, name: str, models: list[dict]) -> dict:
    first = models[0]
    return {"name": name, "app_label": label, "app_url": first.get("admin_url") or "",
            "has_module_perms": True, "models": models}


def order_for_operators(app_list: list[dict]) -> list[dict]:
    """Django's app list (each app with its models) regrouped: SECTIONS, other apps, then System settings.
    Only models the user may see are in `app_list`; a section with none of them is left out."""
    by_label = {m["model"]._meta.label: m for app in app_list for m in app["models"]}
    placed = {label for _, _, labels in SECTIONS for label in labels}
    ordered = []
    for label, name, labels in SECTIONS:
        models = [by_label[m] for m in labels if m in by_label]
        if models:
            ordered.append(_section(label, name, models))
    system = []
    for app in app_list:
        rest = [m for m in app["models"] if m["model"]._meta.label not in placed]
        if app["app_label"] in SYSTEM_APPS:
            system.append((SYSTEM_APPS.index(app["app_label"]), rest))
        elif rest:
            ordered.append({**app, "models": rest})
    system_models = [m for _, models in sorted(system, key=lambda pair: pair[0]) for m in models]
    if system_models:
        ordered.append(_section(*SYSTEM_SECTION, system_models))
    return ordered


class EneoAdminConfig(AdminConfig):
    default_site = "eneo_site.admin_site.EneoAdminSite"
