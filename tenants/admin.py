from django import forms
from django.contrib import admin, messages
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html


from . import scopes, services
from .actors import Actor
from .api_keys import KEY_PREFIX, api_key_create, api_key_revoke
from .models import AuditEvent, Tenant, TenantApiKey, TenantMembership
from .selectors import tenant_scope_q, tenants_administered


class NotFoundOutsideScopeMixin:
    """An object the user may not see is a 404, exactly like an id that never existed.

    Django's admin answers a missing object with a redirect and a "doesn't exist" message, and some views with a
    403 first: either way the answer would differ from a never-existing id. get_object returns only what
    get_queryset (the user's scope) holds, so raising here covers change, delete, history and custom views.
    """

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(f"No {self.opts.verbose_name} with this id.")
        return obj


class TenantScopedAdminMixin(NotFoundOutsideScopeMixin):
    """A ModelAdmin over tenants' rows: tenant admins see (and pick) only the tenants they administer,
    superusers every tenant (tenants.selectors.tenant_scope_q). `tenant_path` leads from the model to its tenant.
    """

    tenant_path = "tenant"

    def get_queryset(self, request):
        return super().get_queryset(request).filter(tenant_scope_q(request.user, self.tenant_path))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == self.tenant_path:
            kwargs["queryset"] = tenants_administered(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class TenantMembershipInline(admin.TabularInline):
    model = TenantMembership
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "slug", "is_active", "monthly_budget", "credential_count", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [TenantMembershipInline]  # credentials.admin adds the tenant's credentials (imports run one way)
    readonly_fields = ("id", "created_at", "updated_at")
    fields = ("id", "name", "slug", "is_active", "monthly_budget", "credential_policy", "created_at", "updated_at")
    tenant_path = "pk"

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(_credential_count=Count("credentials"))

    def get_readonly_fields(self, request, obj=None):
        """Only sysadmins set a tenant's budget, its credential policy or switch it on and off: a tenant admin
        cannot lift its own cap or make its tenant use the shared keys."""
        if request.user.is_superuser:
            return self.readonly_fields
        return (*self.readonly_fields, "is_active", "monthly_budget", "credential_policy")

    @admin.display(description="Credentials", ordering="_credential_count")
    def credential_count(self, obj):
        return obj._credential_count

    def save_model(self, request, obj, form, change):
        actor = Actor.from_request(request, source="admin")
        if change:
            services.tenant_update(actor=actor, tenant=obj, **{f: form.cleaned_data[f] for f in form.changed_data})
        else:
            created = services.tenant_create(actor=actor, name=obj.name, slug=obj.slug, is_active=obj.is_active,
                                             monthly_budget=obj.monthly_budget,
                                             credential_policy=obj.credential_policy)
            obj.pk = created.pk

    def get_deleted_objects(self, objs, request):
        """A tenant's API keys and usage records go with it, although nobody deletes them one by one here
        (keys are revoked, usage is append-only): their admins' "no delete" must not block the tenant's."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        by_design = {str(model._meta.verbose_name) for model, model_admin in self.admin_site._registry.items()
                     if isinstance(model_admin, (ReadOnlyAdminMixin, TenantApiKeyAdmin))}
        return deleted, counts, perms_needed - by_design, protected

    def delete_model(self, request, obj):
        services.tenant_delete(actor=Actor.from_request(request, source="admin"), tenant=obj)

    def delete_queryset(self, request, queryset):
        actor = Actor.from_request(request, source="admin")
        for tenant in queryset:
            services.tenant_delete(actor=actor, tenant=tenant)

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


class ReadOnlyAdminMixin:
    """Records nobody adds, changes or deletes by hand (audit events, usage)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """Append-only: nobody can add, change or delete events here. Tenant admins see their tenants' events;
    instance-level events (no tenant) are for superusers."""

    list_display = ("created_at", "actor", "action", "target_repr", "tenant", "source", "ip")
    list_filter = ("action", "source", ("tenant", admin.RelatedOnlyFieldListFilter))
    search_fields = ("actor", "action", "target_repr", "target_id")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"


# --- Tenant API keys ------------------------------------------------------------------------------------

API_KEY_SCOPES = scopes.CHOICES


class TenantApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=API_KEY_SCOPES, widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do. Give only what the client needs.")

    class Meta:
        model = TenantApiKey
        fields = ("tenant", "name", "scopes", "expires_at")
        help_texts = {"tenant": "The tenant the key acts for: it sees only what that tenant may see."}

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future (or empty: never expires).")
        return expires_at


@admin.register(TenantApiKey)
class TenantApiKeyAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    """Created once with the plaintext shown once (never stored: only a prefix and an HMAC digest); revoked,
    never edited or deleted. All writes go through tenants.api_keys."""

    add_form = TenantApiKeyAddForm
    list_display = ("name", "tenant", "key_prefix", "scope_list", "is_active", "expires_at", "last_used_at")
    list_filter = ("is_active", ("tenant", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "prefix", "tenant__name")
    list_select_related = ("tenant", "created_by")
    actions = ("revoke_selected",)
    fields = ("tenant", "name", "key_prefix", "scope_list", "is_active", "expires_at", "created_by", "created_at",
              "last_used_at")
    readonly_fields = fields

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return self.add_form.Meta.fields if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def lookup_allowed(self, lookup, value, request=None):
        if lookup.split("__")[0] == "digest":
            return False
        return super().lookup_allowed(lookup, value, request)

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the key stays on record

    @admin.display(description="Key", ordering="prefix")
    def key_prefix(self, obj):
        return f"{KEY_PREFIX}{obj.prefix}_..."

    @admin.display(description="Scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes) or "-"

    def save_model(self, request, obj, form, change):
        if change:
            return  # nothing is editable: revoke with the action
        data = form.cleaned_data
        created = api_key_create(actor=Actor.from_request(request, source="admin"), tenant=data["tenant"],
                                 name=data["name"], scopes=data["scopes"], created_by=request.user,
                                 expires_at=data.get("expires_at"))
        obj.pk, obj.prefix = created.api_key.pk, created.api_key.prefix
        request._created_api_key = created.plaintext  # for response_add only; never stored

    def response_add(self, request, obj, post_url_continue=None):
        plaintext = getattr(request, "_created_api_key", None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered into this very response, so the message is consumed here and never reaches the message
        # storage (cookie or session); the page is not cached (admin_view adds never_cache).
        messages.success(request, format_html(
            "The API key “{}” was created. Copy it now: it is shown only this once and is not stored. "
            "<br><code>{}</code><br><a href=\"{}\">Back to the API keys</a>",
            obj.name, plaintext, reverse("admin:tenants_tenantapikey_changelist")))
        return TemplateResponse(request, "admin/base_site.html", {
            **self.admin_site.each_context(request), "title": "API key created", "subtitle": None,
        })

    @admin.action(description="Revoke the selected keys", permissions=("change",))
    def revoke_selected(self, request, queryset):
        actor = Actor.from_request(request, source="admin")
        revoked = [api_key_revoke(actor=actor, api_key=key).name for key in queryset.filter(is_active=True)]
        self.message_user(request, f"Revoked: {', '.join(revoked)}." if revoked else "Nothing to revoke.",
                          messages.SUCCESS if revoked else messages.WARNING)
