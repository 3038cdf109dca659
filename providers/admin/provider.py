"""ProviderAdmin: list, change page (keys and models inline, connection test, grants), wizard for adding."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db import models
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from credentials.forms import SETTING_PREFIX, settings_form_class
from credentials.masking import mask_last4

from providers import services
from providers.checks.jobs import check_expire_stale
from providers.models import AIModel, Provider, ProviderKey
from providers.provider_types import get_spec
from providers.selectors import model_list, provider_can, provider_check_list, provider_search
from providers.admin.base import ScopedAdminMixin, actor_for, health_badge, object_post_view, principal_for
from providers.admin.checks import run_discovery, run_model_validate, run_provider_test
from providers.admin.dashboard import health_history_context
from providers.admin.forms import AIModelInlineForm, ProviderChangeForm, ProviderKeyInlineForm
from providers.admin.sharing import SharingAdminMixin
from providers.admin.wizard import ProviderWizard


LAST_CHECKS = 10  # listed under "Last checks"
HEALTH_HISTORY = 50  # checks read for the health history chart and its changes


class ProviderChildInline(admin.TabularInline):
    """Keys and models are part of their provider: whoever may change the provider may change them."""

    extra = 0

    def _provider_allows(self, request, obj, action="change") -> bool:
        return obj is not None and self.admin_site.get_model_admin(Provider).can(request, obj, action)

    def has_view_permission(self, request, obj=None):
        return True  # only ever shown on a provider page the user was allowed to open

    def has_add_permission(self, request, obj):
        return self._provider_allows(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._provider_allows(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._provider_allows(request, obj)


class ProviderKeyInline(ProviderChildInline):
    model = ProviderKey
    form = ProviderKeyInlineForm
    fields = ("label", "masked", "new_secret", "is_active", "created_at", "last_used_at")
    readonly_fields = ("masked", "created_at", "last_used_at")
    verbose_name = "API key"
    verbose_name_plural = "API keys (rotation: add the new key, test, then untick 'active' on the old one)"

    @admin.display(description="Stored key")
    def masked(self, obj):
        return obj.masked if obj.pk else ""


class AIModelInline(ProviderChildInline):
    model = AIModel
    form = AIModelInlineForm
    fields = ("model_id", "display_label", "alias", "model_type", "status", "instance_wide", "context_window",
              "input_cost_per_million", "output_cost_per_million")
    show_change_link = True
    verbose_name_plural = "Models"

    def get_queryset(self, request):
        return model_list(principal=principal_for(request))  # the formset narrows it to this provider

    def get_fields(self, request, obj=None):
        if self._provider_allows(request, obj):
            return (*self.fields, "validate")
        return self.fields

    def get_readonly_fields(self, request, obj=None):
        return ("validate",)

    @admin.display(description="Validate")
    def validate(self, obj):
        if not obj.pk:
            return ""
        # Submits the small form rendered below the page (no nested forms, works without JavaScript).
        return format_html('<button type="submit" form="validate-model-form" name="model" value="{}" '
                           'class="button">Validate</button>', obj.pk)


@admin.register(Provider)
class ProviderAdmin(SharingAdminMixin, ScopedAdminMixin, admin.ModelAdmin):
    form = ProviderChangeForm
    list_display = ("name", "provider_type", "tenant", "status", "health", "model_count", "active_key",
                    "instance_wide")
    list_filter = ("provider_type", "status", "health_status", ("tenant", admin.RelatedOnlyFieldListFilter),
                   "instance_wide")
    search_fields = ("name", "public_id", "base_url")
    list_select_related = ("tenant",)
    inlines = (ProviderKeyInline, AIModelInline)
    actions = ("share_selected", "revoke_selected")
    change_form_template = "admin/providers/provider/change_form.html"
    delete_confirmation_template = "admin/providers/provider/delete_confirmation.html"
    readonly_fields = ("public_id", "provider_type", "tenant", "owner", "health", "health_error", "env_source",
                       "created_at", "updated_at")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}  # base_url is a checked CharField anyway

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wizard = ProviderWizard(self)

    def object_allowed(self, principal, obj, action):
        return provider_can(principal, obj, action)

    def get_queryset(self, request):
        # Visible providers only, with model count and active key's last4 as subqueries: one query per page.
        return provider_search(principal=principal_for(request))

    def get_fieldsets(self, request, obj=None):
        main = ["name", "provider_type", "tenant", "public_id", "owner", "status", "instance_wide"]
        if obj is not None and obj.env_source:
            main.append("env_source")
        return [
            (None, {"fields": main}),
            ("Connection", {"fields": ("base_url", "api_version",
                                       *(SETTING_PREFIX + f.name for f in get_spec(obj.provider_type).fields
                                         if f.is_setting))} if obj is not None else {"fields": ("base_url",)}),
            ("Capabilities and limits", {"fields": ("capability_flags", "rpm", "tpm", "max_concurrency")}),
            ("Health", {"fields": ("health", "health_error")}),
            ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ]

    def get_readonly_fields(self, request, obj=None):
        readonly = list(self.readonly_fields)
        if not principal_for(request).is_sysadmin or (obj is not None and obj.tenant_id):
            readonly.append("instance_wide")  # visible to every tenant: a sysadmin's, for instance-level ones
        return readonly

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deletion goes through the page: the models conflict is explained
        return actions

    # --- list columns ---------------------------------------------------------------------------------

    @admin.display(description="Health", ordering="health_status")
    def health(self, obj):
        return health_badge(obj.health_status, obj.get_health_status_display(), obj.health_latency_ms,
                            obj.health_checked_at)

    @admin.display(description="Models", ordering="models_count")
    def model_count(self, obj):
        return obj.models_count

    @admin.display(description="Active key")
    def active_key(self, obj):
        if obj.active_key_last4 is not None:
            return mask_last4(obj.active_key_last4)
        return "environment" if obj.env_source else "-"

    # --- add: the wizard ------------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            *self.wizard.get_urls(),
            path("<path:object_id>/test/", wrap(self.test_view), name="providers_provider_test"),
            path("<path:object_id>/discover/", wrap(self.discover_view), name="providers_provider_discover"),
            path("<path:object_id>/validate-model/", wrap(self.validate_model_view),
                 name="providers_provider_validate_model"),
            *self.sharing_urls(),
            *super().get_urls(),
        ]

    def add_view(self, request, form_url="", extra_context=None):
        return HttpResponseRedirect(reverse("admin:providers_provider_add"))

    # --- change ---------------------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        provider = self.get_scoped_object(request, unquote(object_id))
        # One query for both: the last checks listed, and the longer health history (chart and changes).
        history = list(provider_check_list(provider=provider, limit=HEALTH_HISTORY))
        checks = history[:LAST_CHECKS]
        check_expire_stale(checks=checks)  # one whose worker stopped shows as failed (and the page stops refreshing)
        extra_context = {**(extra_context or {}), **self.sharing_context(request, provider), "checks": checks,
                         "checks_pending": any(c.state != "done" for c in checks),
                         "lists_models": get_spec(provider.provider_type).lists_models,
                         **health_history_context(history)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None:  # the type's settings (AWS region, Vertex project, ...) as fields of their own
            kwargs["form"] = settings_form_class(self.form, obj.provider_type, services.provider_settings(obj),
                                                 readonly=self.get_readonly_fields(request, obj))
        form = super().get_form(request, obj, change=change, **kwargs)
        form.actor = actor_for(request)
        return form

    def save_model(self, request, obj, form, change):
        obj.refresh_from_db()  # the form already copied its values onto obj; the service needs the "before"
        fields = {name: form.cleaned_data[name] for name in form.changed_data if name in services.PROVIDER_FIELDS}
        if "capability_flags" in form.changed_data:
            fields["capabilities"] = form.capabilities_value()
        config = form.config_value()
        services.provider_update(actor=actor_for(request), provider=obj, **fields,
                                 **({"config": config} if config != form.settings_stored else {}))

    def save_formset(self, request, form, formset, change):
        """Keys and models are written through the services, row by row (never formset.save())."""
        actor, provider = actor_for(request), form.instance
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

        if formset.model is ProviderKey:
            def create(row):
                data = row.cleaned_data
                return services.provider_key_add(actor=actor, provider=provider, secret=data["new_secret"],
                                                 label=data.get("label", ""), is_active=data.get("is_active", True))

            def update(key, row):
                services.provider_key_update(actor=actor, key=key, label=row.cleaned_data.get("label"),
                                             is_active=row.cleaned_data.get("is_active"))

            def delete(key):
                services.provider_key_delete(actor=actor, key=key)
        else:
            def changed(row):
                return {name: row.cleaned_data[name] for name in row.changed_data if name in services.MODEL_FIELDS}

            def create(row):
                fields = changed(row)
                fields.pop("model_id", None)
                return services.model_create(actor=actor, provider=provider, model_id=row.cleaned_data["model_id"],
                                             **fields)

            def update(model, row):
                services.model_update(actor=actor, model=model, **changed(row))

            def delete(model):
                services.model_delete(actor=actor, model=model)

        for row in formset.forms:
            if not row.has_changed():
                continue
            obj = row.instance
            if obj.pk is None:
                if not row.cleaned_data.get("DELETE"):
                    formset.new_objects.append(create(row))
                continue
            obj.refresh_from_db()  # the form already copied its values onto obj; the service needs the "before"
            if row.cleaned_data.get("DELETE"):
                delete(obj)
                formset.deleted_objects.append(obj)
            else:
                update(obj, row)
                formset.changed_objects.append((obj, row.changed_data))

    # --- delete -------------------------------------------------------------------------------------

    def delete_model(self, request, obj):
        services.provider_delete(actor=actor_for(request), provider=obj, force=request.POST.get("force") == "on")

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.Conflict as exc:
            self.message_user(request, f"{exc} Here: tick “also delete its models” to delete both.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    # --- connection test, model validation ------------------------------------------------------------

    @object_post_view("change")
    def test_view(self, request, provider):
        outcome = run_provider_test(provider, request)
        latency = f" ({outcome.latency_ms} ms)" if outcome.latency_ms is not None else ""
        self.message_user(request, f"Connection test: {outcome.message}{latency}",
                          outcome.level)
        return self.change_redirect(provider)

    @object_post_view("change")
    def discover_view(self, request, provider):
        outcome = run_discovery(provider, request)
        self.message_user(request, f"Model discovery: {outcome.message}", outcome.level)
        return self.change_redirect(provider)

    @object_post_view("change")
    def validate_model_view(self, request, provider):
        model = model_list(principal=principal_for(request), provider=provider).filter(
            pk=request.POST.get("model") if (request.POST.get("model") or "").isdigit() else None).first()
        if model is None:
            self.message_user(request, "No such model.", messages.ERROR)
        else:
            outcome = run_model_validate(model, request)
            self.message_user(request, f"Validation of {model.model_id}: {outcome.message}",
                              outcome.level)
        return self.change_redirect(provider)
