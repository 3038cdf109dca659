from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from credentials.models import TenantCredential

from . import services
from .actors import Actor
from .models import AuditEvent, Tenant, TenantMembership


class TenantMembershipInline(admin.TabularInline):
    model = TenantMembership
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)


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


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "is_active", "credential_count", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [TenantMembershipInline, TenantCredentialInline]
    readonly_fields = ("id", "created_at", "updated_at")
    fields = ("id", "name", "slug", "is_active", "created_at", "updated_at")

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(_credential_count=Count("credentials"))

    @admin.display(description="Credentials", ordering="_credential_count")
    def credential_count(self, obj):
        return obj._credential_count

    def save_model(self, request, obj, form, change):
        actor = Actor.from_request(request, source="admin")
        if change:
            services.tenant_update(actor=actor, tenant=obj, **{f: form.cleaned_data[f] for f in form.changed_data})
        else:
            created = services.tenant_create(actor=actor, name=obj.name, slug=obj.slug, is_active=obj.is_active)
            obj.pk = created.pk

    def save_formset(self, request, form, formset, change):
        if formset.model is not TenantMembership:
            return super().save_formset(request, form, formset, change)
        actor = Actor.from_request(request, source="admin")
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for inline_form in formset.forms:
            if not inline_form.has_changed() or not inline_form.cleaned_data:
                continue
            data = inline_form.cleaned_data
            if data.get("DELETE"):
                if inline_form.instance.pk:
                    services.membership_remove(actor=actor, membership=inline_form.instance)
                continue
            services.membership_set(actor=actor, tenant=form.instance, user=data["user"], role=data["role"])


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Append-only: nobody can add, change or delete events here."""

    list_display = ("created_at", "actor", "action", "target_repr", "tenant", "source", "ip")
    list_filter = ("action", "source", "tenant")
    search_fields = ("actor", "action", "target_repr", "target_id")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
