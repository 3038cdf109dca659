from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from tenants.actors import Actor
from tenants.admin import TenantAdmin, TenantApiKeyAdmin, TenantScopedAdminMixin
from tenants.selectors import tenants_administered

from .. import crypto, services
from ..forms import SETTING_PREFIX, settings_form_class
from ..provider_rules import UnknownProviderType, normalise_provider_type, type_fields
from ..selectors import credential_settings
from ..models import TenantCredential
from .forms import CredentialTypeStepForm, TenantCredentialAdminForm, credential_columns

SECRET_FIELDS = ("api_key", "extra")


@admin.register(TenantCredential)
class TenantCredentialAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    """Tenant admins see and set only their tenants' credentials (another tenant's is a 404); superusers all."""

    form = TenantCredentialAdminForm
    list_display = ("tenant", "provider_type", "masked_key", "status_badge", "endpoint", "configured_at")
    list_filter = ("provider_type", ("tenant", admin.RelatedOnlyFieldListFilter))
    search_fields = ("tenant__name", "tenant__slug", "provider_type", "endpoint")
    list_select_related = ("tenant",)
    readonly_fields = ("masked_key", "status_badge", "configured_at", "updated_at")
    change_form_template = "admin/credentials/tenantcredential/change_form.html"

    def get_fieldsets(self, request, obj=None):
        description = ("A tenant's own key for one provider type. Calls of this tenant to models of that type use it; "
                       "if it is broken the call fails with a clear error and never falls back to another key.")
        ptype = obj.provider_type if obj is not None else self.chosen_type(request)
        settings = tuple(SETTING_PREFIX + f.name for f in type_fields(ptype) if f.is_setting) if ptype else ()
        settings_set = ("Settings", {"fields": settings + (("clear_extra",) if obj is not None else ()),
                                     "description": "The provider type's further settings (from LiteLLM's field "
                                                    "catalog). Secret ones are write-only"
                                                    + (": leave blank to keep them." if obj is not None else ".")})
        if obj is None:
            return [(None, {"fields": ("tenant", "provider_type", *credential_columns(ptype)),
                            "description": description}), settings_set]
        return [
            (None, {"fields": ("tenant", "provider_type", "masked_key", "status_badge",
                               *credential_columns(ptype)), "description": description}),
            settings_set,
            ("Record", {"fields": ("configured_at", "updated_at"), "classes": ("collapse",)}),
        ]

    @staticmethod
    def chosen_type(request) -> str:
        """The type picked in step 1 of adding (?provider_type=...), normalised; "" when none or unknown."""
        try:
            return normalise_provider_type(request.GET.get("provider_type", "")[:64])
        except UnknownProviderType:
            return ""

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None:  # the type's settings (AWS region and keys, ...) as fields of their own
            kwargs["form"] = settings_form_class(self.form, obj.provider_type, credential_settings(obj),
                                                 readonly=self.get_readonly_fields(request, obj))
        elif self.chosen_type(request):  # step 2 of adding: the chosen type's fields
            chosen = self.chosen_type(request)
            kwargs["form"] = type(self.form.__name__, (settings_form_class(self.form, chosen, {}),),
                                  {"chosen_type": chosen})
        form = super().get_form(request, obj, change=change, **kwargs)
        form.actor = Actor.from_request(request, source="admin")  # who sets the endpoint decides its egress rule
        return form

    def add_view(self, request, form_url="", extra_context=None):
        """Two steps that work without JavaScript: 1. tenant and type (a GET form); 2. that type's fields."""
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)  # the admin's own 403
        step = CredentialTypeStepForm(request.GET if "provider_type" in request.GET else None,
                                      initial={"tenant": request.GET.get("tenant")},
                                      tenants=tenants_administered(request.user))
        if step.is_bound and step.is_valid() and self.chosen_type(request):
            extra_context = {**(extra_context or {}), "chosen_type": self.chosen_type(request),
                             "step_one_url": reverse("admin:credentials_tenantcredential_add")
                             + f"?tenant={step.cleaned_data['tenant'].pk}",
                             "title": f"Add tenant credential, step 2 of 2: {self.chosen_type(request)} fields"}
            return super().add_view(request, form_url, extra_context)
        return TemplateResponse(request, "admin/credentials/tenantcredential/type_step.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "form": step, "subtitle": None,
            "title": "Add tenant credential, step 1 of 2: tenant and provider type",
            "has_view_permission": self.has_view_permission(request),
        })

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return self.readonly_fields + ("tenant", "provider_type")
        return ()

    @admin.display(description="Stored key")
    def masked_key(self, obj):
        return obj.masked_key

    @admin.display(description="Encryption")
    def status_badge(self, obj):
        return {
            "encrypted": "encrypted",
            "plaintext": "plaintext (run rotate_encryption_key)",
            "undecryptable": "CANNOT BE DECRYPTED - replace it",
            "empty": "-",
        }[obj.encryption_status]

    def lookup_allowed(self, lookup, value, request=None):
        if lookup.split("__")[0] in SECRET_FIELDS:
            return False
        return super().lookup_allowed(lookup, value, request)

    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        cred = services.credential_set(
            actor=Actor.from_request(request, source="admin"),
            tenant=obj.tenant if change else data["tenant"],
            provider_type=obj.provider_type if change else form.chosen_type,
            api_key=data.get("api_key_input") or "",
            endpoint=data.get("endpoint") or "",
            api_version=data.get("api_version") or "",
            deployment_name=data.get("deployment_name") or "",
            extra=form.extra_value(),
            keep_existing_key=change,
        )
        obj.pk = cred.pk

    def delete_model(self, request, obj):
        services.credential_delete(actor=Actor.from_request(request, source="admin"), tenant=obj.tenant,
                                   provider_type=obj.provider_type)

    def delete_queryset(self, request, queryset):
        actor = Actor.from_request(request, source="admin")
        for obj in queryset.select_related("tenant"):
            services.credential_delete(actor=actor, tenant=obj.tenant, provider_type=obj.provider_type)

    def save_related(self, request, form, formsets, change):
        pass  # no related objects; the service saved everything


class TenantCredentialInline(admin.TabularInline):
    """Read-only overview; a credential is added or replaced on its own page (write-only key field)."""

    model = TenantCredential
    extra = 0
    can_delete = False
    fields = ("provider_link", "masked_key", "encryption", "endpoint", "configured_at")
    readonly_fields = fields
    verbose_name_plural = "Credentials (bring your own key)"

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant")  # each row's title names it

    @admin.display(description="Provider")
    def provider_link(self, obj):
        url = reverse("admin:credentials_tenantcredential_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.provider_type)

    @admin.display(description="API key")
    def masked_key(self, obj):
        return obj.masked_key

    @admin.display(description="Encryption")
    def encryption(self, obj):
        return obj.encryption_status


TenantAdmin.inlines = [*TenantAdmin.inlines, TenantCredentialInline]  # shown on the tenant's page
TenantApiKeyAdmin.sealer = crypto  # a new API key waits encrypted in the session for the page that shows it once
