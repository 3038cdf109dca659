"""AIModelAdmin: every model the user may see, across providers; validation, tenant enablement, sharing."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.urls import path
from django.utils.html import format_html, format_html_join

from providers import services
from providers.models import AIModel
from providers.provider_types import get_spec
from providers.selectors import (alias_list, model_can, model_enabled_tenants, model_list, model_list_with_health,
                                 provider_can, provider_list, provider_tenant_choices)
from providers.admin.base import (ScopedAdminMixin, actor_for, error_text, health_badge, object_post_view,
                                  principal_for, when)
from providers.admin.checks import run_model_validate
from providers.admin.forms import KEEP, AIModelAddForm, AIModelChangeForm, TenantEnablementForm
from providers.admin.sharing import SharingAdminMixin, intermediate_page

MAX_VALIDATIONS = 20  # each one is a real call; more at once would outlast the request


class AliasFilter(admin.SimpleListFilter):
    title = "alias"
    parameter_name = "alias"

    def lookups(self, request, model_admin):
        return [(alias, f"{alias} ({count})") for alias, count in alias_list(principal=principal_for(request))]

    def queryset(self, request, queryset):
        return queryset.filter(alias=self.value()) if self.value() else queryset


class ProviderTypeFilter(admin.SimpleListFilter):
    title = "provider type"
    parameter_name = "provider_type"

    def lookups(self, request, model_admin):
        types = model_admin.get_queryset(request).order_by().values_list("provider__provider_type", flat=True)
        return [(key, get_spec(key).label) for key in sorted(types.distinct())]

    def queryset(self, request, queryset):
        return queryset.filter(provider__provider_type=self.value()) if self.value() else queryset


@admin.register(AIModel)
class AIModelAdmin(SharingAdminMixin, ScopedAdminMixin, admin.ModelAdmin):
    form = AIModelChangeForm
    add_form = AIModelAddForm
    list_display = ("model_id", "provider", "alias", "model_type", "status", "provider_status", "health",
                    "enabled_for", "flags", "context_window")
    list_filter = (AliasFilter, "model_type", "status", ProviderTypeFilter)
    search_fields = ("model_id", "alias", "display_label")
    list_select_related = ("provider__tenant",)
    actions = ("validate_selected", "enable_for_tenant", "share_selected", "revoke_selected")
    change_form_template = "admin/providers/aimodel/change_form.html"
    readonly_fields = ("provider", "vanished_at", "enabled_tenants", "created_at", "updated_at")

    def object_allowed(self, principal, obj, action):
        return model_can(principal, obj, action)

    def get_queryset(self, request):
        # With the last validation and the (visible) enabled tenants: the list's columns need no query per row.
        return model_list_with_health(principal=principal_for(request))

    def get_object(self, request, object_id, from_field=None):
        model = super().get_object(request, object_id, from_field)
        model.viewer = principal_for(request)  # whose view the "Enabled for tenants" field shows
        return model

    def get_fieldsets(self, request, obj=None):
        main = ["provider", "model_id", "display_label", "alias", "model_type", "status", "instance_wide"]
        sets = [
            (None, {"fields": main}),
            ("Capabilities", {"fields": ("context_window", "max_output_tokens", "supports_vision", "supports_tools",
                                         "supports_reasoning", "supports_json_mode", "supports_system_prompt",
                                         "supports_streaming")}),
            ("Cost", {"fields": ("input_cost_per_million", "output_cost_per_million")}),
            ("Request parameters", {"fields": ("drop_unsupported_params",)}),
            ("Call parameters (secret)", {"fields": ("model_config_input", "clear_model_config"),
                                          "classes": ("collapse",)}),
        ]
        if obj is not None:
            sets.append(("Record", {"fields": ("enabled_tenants", "vanished_at", "created_at", "updated_at")}))
        return sets

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else ()

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        form = super().get_form(request, obj, **kwargs)
        if obj is None:
            principal = principal_for(request)
            form.provider_allowed = staticmethod(lambda provider: provider_can(principal, provider, "change"))
        return form

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "provider":
            kwargs["queryset"] = provider_list(principal=principal_for(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # --- columns ----------------------------------------------------------------------------------------

    @admin.display(description="Provider status", ordering="provider__status")
    def provider_status(self, obj):
        return obj.provider.get_status_display()

    @admin.display(description="Health", ordering="provider__health_status")
    def health(self, obj):
        provider = obj.provider
        badge = health_badge(provider.health_status, provider.get_health_status_display())
        if obj.last_validation_at is None:
            return format_html('{}<br><span class="quiet">not validated</span>', badge)
        outcome = "validated" if obj.last_validation_ok else "validation failed"
        return format_html('{}<br><span class="quiet">{} {}</span>', badge, outcome, when(obj.last_validation_at))

    @admin.display(description="Enabled for")
    def enabled_for(self, obj):
        if obj.provider.tenant_id:
            return format_html('<span title="A tenant\'s own model needs no enablement">{}</span>', obj.provider.tenant)
        if obj.instance_wide and obj.provider.instance_wide:
            return "All tenants"
        # Only the tenants the viewer administers (all for sysadmins), prefetched by model_list_with_health.
        names = [e.tenant.name for e in obj.visible_enablements]
        if not names:
            return "-"
        text = ", ".join(names)
        return format_html('<span title="{}" style="display:inline-block;max-width:14em;overflow:hidden;'
                           'text-overflow:ellipsis;white-space:nowrap;vertical-align:bottom">{}</span>', text, text)

    @admin.display(description="Flags")
    def flags(self, obj):
        names = [name for name, on in (("vision", obj.supports_vision), ("tools", obj.supports_tools),
                                       ("reasoning", obj.supports_reasoning), ("json", obj.supports_json_mode)) if on]
        return ", ".join(names) or "-"

    @admin.display(description="Enabled for tenants")
    def enabled_tenants(self, obj):
        if obj.provider.tenant_id:
            return "Its own tenant only (a tenant's model needs no enablement)."
        # Only the tenants the viewer administers (all for sysadmins): another tenant's enablement is its business.
        tenants = model_enabled_tenants(principal=obj.viewer, model=obj)
        return format_html_join(", ", "{}", ((t.name,) for t in tenants)) or "-"

    # --- writes through services ------------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        actor, config = actor_for(request), form.config_value()
        fields = {name: form.cleaned_data[name] for name in form.changed_data if name in services.MODEL_FIELDS}
        if change:
            obj.refresh_from_db()  # the form already copied its values onto obj; the service needs the "before"
            services.model_update(actor=actor, model=obj, model_config=config, **fields)
            return
        fields.pop("model_id", None)
        created = services.model_create(actor=actor, provider=form.cleaned_data["provider"],
                                        model_id=form.cleaned_data["model_id"],
                                        model_config=None if config is KEEP else config, **fields)
        obj.pk = created.pk

    def delete_model(self, request, obj):
        services.model_delete(actor=actor_for(request), model=obj)

    def delete_queryset(self, request, queryset):
        actor = actor_for(request)
        for model in queryset.select_related("provider__tenant"):
            services.model_delete(actor=actor, model=model)

    # --- validation -------------------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [path("<path:object_id>/validate/", wrap(self.validate_view), name="providers_aimodel_validate"),
                *self.sharing_urls(), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        model = self.get_scoped_object(request, unquote(object_id))
        return super().change_view(request, object_id, form_url,
                                   {**(extra_context or {}), **self.sharing_context(request, model)})

    def _validate(self, request, model):
        outcome = run_model_validate(model, request)
        latency = f" ({outcome.latency_ms} ms)" if outcome.latency_ms is not None else ""
        self.message_user(request, f"Validation of {model.model_id} ({model.provider}): {outcome.message}{latency}",
                          outcome.level)

    @object_post_view("change")
    def validate_view(self, request, model):
        self._validate(request, model)
        return self.change_redirect(model)

    @admin.action(description="Validate (a tiny real call to each model)", permissions=("change",))
    def validate_selected(self, request, queryset):
        models = list(queryset.select_related("provider")[:MAX_VALIDATIONS + 1])
        if len(models) > MAX_VALIDATIONS:
            self.message_user(request, f"Select at most {MAX_VALIDATIONS} models: each one is a real call.",
                              messages.ERROR)
            return
        for model in models:
            if self.can(request, model, "change"):
                self._validate(request, model)
            else:
                self.message_user(request, f"You may not validate {model.model_id}.", messages.WARNING)

    # --- tenant enablement ------------------------------------------------------------------------------

    @admin.action(description="Enable or disable for a tenant…", permissions=("change",))
    def enable_for_tenant(self, request, queryset):
        tenants = provider_tenant_choices(principal=principal_for(request))
        models = list(queryset.select_related("provider"))
        allowed = [m for m in models if self.can(request, m, "change")]
        if request.POST.get("apply"):
            form = TenantEnablementForm(request.POST, tenants=tenants)
            if form.is_valid():
                self._set_enabled(request, allowed, form.cleaned_data["tenant"], form.cleaned_data["enabled"])
                return None
        else:
            form = TenantEnablementForm(tenants=tenants)
        return intermediate_page(
            self, request, form=form, allowed=allowed, denied=[m for m in models if m not in allowed],
            action_name="enable_for_tenant", title="Enable or disable for a tenant", submit_label="Apply",
            intro="Let the chosen tenant's users and API keys use these instance-level models (or stop them):")

    def _set_enabled(self, request, models, tenant, enabled: bool):
        actor, done = actor_for(request), []
        for model in models:
            try:
                services.model_set_tenant_enabled(actor=actor, model=model, tenant=tenant, enabled=enabled)
                done.append(model.model_id)
            except ValidationError as exc:
                self.message_user(request, f"{model.model_id}: {error_text(exc)}", messages.ERROR)
        if done:
            self.message_user(request, f"{'Enabled' if enabled else 'Disabled'} for {tenant}: {', '.join(done)}.",
                              messages.SUCCESS)
