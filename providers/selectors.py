"""All reads of providers and models, filtered by who is asking. The one permission filter (STYLE.md 8.2).

Who can see a provider, in order (DESIGN.md): the user created it; it is instance-wide; the user or one of
their groups holds an ACL grant (django-guardian, direct-FK tables, global permissions ignored). On top:
tenant admins see all of their tenant's providers, sysadmins see everything, and nobody outside a tenant ever
sees that tenant's providers (instance-wide is only possible for instance-level providers).

A tenant API key (no user) sees its tenant's providers, instance-wide ones and instance-level providers with a
model enabled for its tenant.

Reading something you may not see is "not found"; changing something you may only see is "forbidden".
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from tenants.models import Tenant, TenantMembership

from .choices import ModelStatus, ProviderStatus
from .models import AIModel, Provider, TenantModelEnablement


@dataclass(frozen=True)
class Principal:
    """Who is asking: an admin/user (`user`), a tenant API key (`tenant`), or a sysadmin."""

    user: object | None = None
    tenant: Tenant | None = None
    is_sysadmin: bool = False

    @classmethod
    def for_user(cls, user) -> "Principal":
        return cls(user=user, is_sysadmin=bool(user.is_active and user.is_superuser))


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


ACTIONS = ("view", "change", "share", "delete")


def _member_tenants(user, *, admin_only=False):
    qs = TenantMembership.objects.filter(user=user)
    if admin_only:
        qs = qs.filter(role=TenantMembership.Role.ADMIN)
    return qs.values("tenant_id")


def _acl_ids(user, model, action: str):
    codename = f"{model._meta.app_label}.{action}_{model._meta.model_name}"
    return get_objects_for_user(user, codename, klass=model, accept_global_perms=False, with_superuser=False).values("pk")


def _tenant_enabled_provider_ids(tenant):
    return TenantModelEnablement.objects.filter(tenant=tenant).values("model__provider_id")


def provider_visible_q(principal: Principal) -> Q:
    if principal.is_sysadmin:
        return Q()
    if principal.user is None:
        tenant = principal.tenant
        return Q(tenant=tenant) | Q(tenant__isnull=True, instance_wide=True) | Q(
            tenant__isnull=True, pk__in=_tenant_enabled_provider_ids(tenant)
        )
    user = principal.user
    in_scope = Q(tenant__isnull=True) | Q(tenant__in=_member_tenants(user))
    visible = (
        Q(owner=user)
        | Q(instance_wide=True)
        | Q(tenant__in=_member_tenants(user, admin_only=True))
        | Q(pk__in=_acl_ids(user, Provider, "view"))
    )
    return in_scope & visible


def provider_list(*, principal: Principal) -> QuerySet[Provider]:
    return Provider.objects.filter(provider_visible_q(principal)).select_related("tenant").order_by("name", "id")


def provider_get(*, principal: Principal, public_id: str, action: str = "view") -> Provider:
    """The provider, if visible (else NotFound) and if `action` is allowed (else Forbidden)."""
    provider = provider_list(principal=principal).filter(public_id=public_id).first()
    if provider is None:
        raise NotFound(f"Provider {public_id[:60]} not found.")
    if action != "view" and not provider_can(principal, provider, action):
        raise Forbidden(f"You may view provider '{provider.name}' but not {action} it.")
    return provider


def provider_can(principal: Principal, provider: Provider, action: str) -> bool:
    assert action in ACTIONS
    if principal.is_sysadmin:
        return True
    if principal.user is None:
        return provider.tenant_id is not None and provider.tenant_id == principal.tenant.pk
    user = principal.user
    if provider.owner_id == user.pk:
        return True
    if provider.tenant_id and TenantMembership.objects.filter(
        user=user, tenant_id=provider.tenant_id, role=TenantMembership.Role.ADMIN
    ).exists():
        return True
    return user.has_perm(f"providers.{action}_provider", provider)


def model_visible_q(principal: Principal) -> Q:
    if principal.is_sysadmin:
        return Q()
    if principal.user is None:
        tenant = principal.tenant
        enabled = TenantModelEnablement.objects.filter(tenant=tenant, model=OuterRef("pk"))
        return Q(provider__tenant=tenant) | Q(provider__tenant__isnull=True) & (
            Q(provider__instance_wide=True, instance_wide=True) | Q(Exists(enabled))
        )
    user = principal.user
    provider_ok = Q(provider__in=Provider.objects.filter(provider_visible_q(principal)).values("pk"))
    managed = Q(provider__owner=user) | Q(provider__tenant__in=_member_tenants(user, admin_only=True))
    enabled_for_my_tenants = Q(
        pk__in=TenantModelEnablement.objects.filter(tenant__in=_member_tenants(user)).values("model_id")
    )
    return (provider_ok & (Q(instance_wide=True) | managed | Q(pk__in=_acl_ids(user, AIModel, "view")))) | (
        Q(provider__tenant__isnull=True) & enabled_for_my_tenants
    )


def model_list(*, principal: Principal, provider: Provider | None = None) -> QuerySet[AIModel]:
    qs = AIModel.objects.filter(model_visible_q(principal)).select_related("provider")
    if provider is not None:
        qs = qs.filter(provider=provider)
    return qs.order_by("provider__name", "model_id")


def list_active_models(*, principal: Principal) -> QuerySet[AIModel]:
    """What a caller may use: active models of active providers that it can see."""
    return model_list(principal=principal).filter(
        status=ModelStatus.ACTIVE, provider__status=ProviderStatus.ACTIVE
    )


def models_by_alias(*, principal: Principal, alias: str) -> QuerySet[AIModel]:
    return list_active_models(principal=principal).filter(alias=alias)


def model_can(principal: Principal, model: AIModel, action: str) -> bool:
    if provider_can(principal, model.provider, action):
        return True
    if principal.user is not None and not principal.is_sysadmin:
        return principal.user.has_perm(f"providers.{action}_aimodel", model)
    return False


def alias_list() -> list[tuple[str, int]]:
    from django.db.models import Count

    return list(
        AIModel.objects.exclude(alias="").values_list("alias").annotate(n=Count("id")).order_by("alias")
    )
