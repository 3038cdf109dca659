import secrets
from dataclasses import dataclass
from typing import Callable

from django import forms
from django.contrib import admin, messages
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from . import scopes, services
from .actors import Actor
from .api_keys import KEY_PREFIX, api_key_create, api_key_revoke
from .models import AuditEvent, Tenant, TenantApiKey, TenantMembership
from .selectors import tenant_api_key_list, tenant_scope_q, tenants_administered


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


class TenantMembershipInlineForm(forms.ModelForm):
    """An existing membership's user is fixed (remove the row and add another to change it): shown as a plain
    one-option select, so the page does not query the user list once per member."""

    class Meta:
        model = TenantMembership
        fields = ("user", "role")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and "user" in self.fields:
            field = self.fields["user"]
            field.disabled = True
            field.widget = forms.Select(choices=[(self.instance.user_id, str(self.instance.user))])


class TenantMembershipInline(admin.TabularInline):
    model = TenantMembership
    form = TenantMembershipInlineForm
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user", "tenant")  # each row's title names both


@dataclass(frozen=True)
class PageSection:
    """A read-only table on a tenant's page. Rows are lists of cells: text, or safe HTML from format_html."""

    title: str
    headers: tuple[str, ...]
    rows: list
    empty: str = "None."
    facts: tuple[tuple[str, str], ...] = ()  # (label, value) shown above the table
    links: tuple[tuple[str, str], ...] = ()  # (url, text) shown below it
    section_id: str = ""


# (request, tenant) -> PageSection | None. Apps that tenants may not import (providers) add theirs on import.
SectionBuilder = Callable[[object, Tenant], "PageSection | None"]


def api_keys_section(request, tenant: Tenant) -> PageSection:
    keys = list(tenant_api_key_list(tenant=tenant))
    now = timezone.now()

    def state(key):
        if not key.is_active:
            return "revoked"
        return "expired" if key.expires_at and key.expires_at <= now else "active"

    rows = [[format_html('<a href="{}">{}</a>', reverse("admin:tenants_tenantapikey_change", args=[key.pk]),
                         key.name),
             format_html("<code>{}{}_...</code>", KEY_PREFIX, key.prefix), ", ".join(key.scopes) or "-",
             state(key), key.expires_at or "never", key.last_used_at or "never"] for key in keys]
    return PageSection(
        title="API keys", headers=("Name", "Key", "Scopes", "Status", "Expires", "Last used"), rows=rows,
        empty="No API keys yet.", section_id="tenant-api-keys",
        links=((reverse("admin:tenants_tenantapikey_add") + f"?tenant={tenant.pk}", "Add an API key"),
               (reverse("admin:tenants_tenantapikey_changelist") + f"?tenant__id__exact={tenant.pk}",
                "All of this tenant's API keys")))


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
    change_form_template = "admin/tenants/tenant/change_form.html"
    # Read-only sections below the members and credentials: API keys here; providers.admin adds the enabled
    # models and this month's usage (imports run one way).
    page_sections: list[SectionBuilder] = [api_keys_section]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and obj.pk:  # get_object already limited obj to the user's scope
            context["tenant_sections"] = [s for s in (build(request, obj) for build in self.page_sections) if s]
        return super().render_change_form(request, context, add, change, form_url, obj)

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


CREATED_KEYS_SESSION = "tenants_created_api_keys"
MAX_PENDING_KEYS = 5


class _NoSealer:
    @staticmethod
    def encrypt(value):
        raise RuntimeError("credentials.admin sets TenantApiKeyAdmin.sealer (imports run one way)")

    decrypt = encrypt


@admin.register(TenantApiKey)
class TenantApiKeyAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    """Created once with the plaintext shown once (never stored: only a prefix and an HMAC digest); revoked,
    never edited or deleted. All writes go through tenants.api_keys."""

    add_form = TenantApiKeyAddForm
    # Encrypts a new key's plaintext for the one redirect to the page that shows it: credentials.crypto, set by
    # credentials.admin (tenants does not import credentials).
    sealer = _NoSealer
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
        """POST, redirect, GET: the plaintext waits, encrypted, under a one-time token in the session; the GET
        shows it once. A reload of that page shows "already shown" and never creates another key."""
        plaintext = getattr(request, "_created_api_key", None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        token = secrets.token_urlsafe(16)
        pending = dict(request.session.get(CREATED_KEYS_SESSION) or {})
        pending = dict(list(pending.items())[-(MAX_PENDING_KEYS - 1):])  # unread ones do not pile up
        pending[token] = {"sealed": self.sealer.encrypt(plaintext), "key_id": obj.pk}
        request.session[CREATED_KEYS_SESSION] = pending
        return HttpResponseRedirect(reverse("admin:tenants_tenantapikey_created") + f"?token={token}")

    def get_urls(self):
        return [path("created/", self.admin_site.admin_view(self.created_view), name="tenants_tenantapikey_created"),
                *super().get_urls()]

    def created_view(self, request):
        """The new key, shown once: popped from the session, so a reload finds nothing (and posts nothing)."""
        pending = dict(request.session.get(CREATED_KEYS_SESSION) or {})
        entry = pending.pop((request.GET.get("token") or "")[:64], None)
        if entry is not None:
            request.session[CREATED_KEYS_SESSION] = pending
        key = plaintext = None
        if entry is not None:
            key = self.get_queryset(request).filter(pk=entry.get("key_id")).first()
            try:
                plaintext = self.sealer.decrypt(entry["sealed"]) if key is not None else None
            except Exception:  # noqa: BLE001 - an unreadable entry (rotated key) is as good as gone
                plaintext = None
        return TemplateResponse(request, "admin/tenants/tenantapikey/created.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "API key created",
            "subtitle": None, "api_key": key, "plaintext": plaintext,
            "changelist_url": reverse("admin:tenants_tenantapikey_changelist"),
        })

    @admin.action(description="Revoke the selected keys", permissions=("change",))
    def revoke_selected(self, request, queryset):
        actor = Actor.from_request(request, source="admin")
        revoked = [api_key_revoke(actor=actor, api_key=key).name for key in queryset.filter(is_active=True)]
        self.message_user(request, f"Revoked: {', '.join(revoked)}." if revoked else "Nothing to revoke.",
                          messages.SUCCESS if revoked else messages.WARNING)
