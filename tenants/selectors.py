from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from .models import Tenant, TenantMembership


def tenant_get(*, tenant_id) -> Tenant | None:
    try:
        return Tenant.objects.get(pk=uuid.UUID(str(tenant_id)))
    except (Tenant.DoesNotExist, ValueError):
        return None


def tenants_for_user(user):
    if user.is_superuser:
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user=user)


def _administered_ids(user):
    return TenantMembership.objects.filter(user=user, role=TenantMembership.Role.ADMIN).values("tenant_id")


def tenant_scope_q(user, path: str = "tenant") -> Q:
    """The admin's tenant filter: rows whose tenant (reached by `path`; "pk" for Tenant itself) `user` administers.

    Active superusers (sysadmins) see every tenant; everyone else only the tenants where they hold the admin
    role, whatever model-level permissions they have. Rows of no tenant (instance level) are for superusers.
    """
    if user.is_active and user.is_superuser:
        return Q()
    return Q(**{f"{path}__in": _administered_ids(user)})


def tenants_administered(user) -> QuerySet[Tenant]:
    """Tenants `user` manages in the admin (the choices of every tenant field): see tenant_scope_q."""
    return Tenant.objects.filter(tenant_scope_q(user, "pk")).order_by("name")


def audit_list(*, tenant=None, all_tenants: bool = False, action=None, actor=None, target_type=None,
               target_id=None, source=None, since=None, until=None):
    """Audit events: one tenant's (a tenant admin's view), or all (`all_tenants`, sysadmins), newest first."""
    from .models import AuditEvent

    qs = AuditEvent.objects.select_related("tenant")
    if not all_tenants:
        qs = qs.filter(tenant=tenant)
    elif tenant is not None:
        qs = qs.filter(tenant=tenant)
    for field, value in (("action", action), ("actor", actor), ("target_type", target_type),
                         ("target_id", target_id), ("source", source)):
        if value:
            qs = qs.filter(**{field: value})
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    return qs.order_by("-created_at", "-id")


def tenant_api_key_list(*, tenant):
    """A tenant's API keys for its page (callers check the tenant is in the user's scope): active first, newest
    first; only prefixes and metadata (the digest is never shown)."""
    from .models import TenantApiKey

    return TenantApiKey.objects.filter(tenant=tenant).order_by("-is_active", "-created_at", "-id")
