from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .actors import Actor
from .models import AuditEvent, CatalogChange, CatalogVersion, Tenant, TenantMembership

log = logging.getLogger("eneo.catalog")

CHANGE_LOG_DAYS = 1  # older change rows are pruned; a worker further behind reloads everything
_PRUNE_EVERY = 500  # versions


def catalog_bump(tenant=None, *, kind: str = CatalogChange.Kind.DATA) -> None:
    """Tell every gateway worker's catalog (providers.gateway.catalog) that routing or authentication data changed.

    Call it from every write service that changes what the gateway may use: API keys, tenants, credentials,
    providers, their keys and models, enablements (reads never call it). `tenant` (a Tenant or its id) is whose
    entries the workers reload; None = an instance-level change (instance providers, their keys and models:
    every tenant's usable models). `kind=health`: only a provider's health changed (the order of candidates).

    The new version is written when the current transaction commits (at once outside one), in a small
    transaction of its own: a rolled-back change bumps nothing, and the version row stays locked for
    milliseconds, not for the whole write. All bumps of one transaction make one version.
    """
    change = (getattr(tenant, "pk", tenant), str(kind))
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        for _savepoints, callback, _robust in connection.run_on_commit:
            if isinstance(callback, _CatalogFlush):  # this transaction bumps already: one more change in it
                callback.changes.add(change)
                return
    # robust: the write itself is committed; a failed bump is logged and healed by CATALOG_MAX_AGE_SECONDS
    transaction.on_commit(_CatalogFlush(change), robust=True)


class _CatalogFlush:
    """The on-commit callback of one transaction's bumps (Django drops it, changes and all, on a rollback)."""

    def __init__(self, change: tuple):
        self.changes = {change}

    def __call__(self):
        with transaction.atomic():
            if not CatalogVersion.objects.filter(pk=1).update(version=F("version") + 1):
                CatalogVersion.objects.get_or_create(pk=1)  # a new (or flushed) database: a new epoch
                CatalogVersion.objects.filter(pk=1).update(version=F("version") + 1)
            version = CatalogVersion.objects.values_list("version", flat=True).get(pk=1)
            CatalogChange.objects.bulk_create(
                [CatalogChange(version=version, tenant_id=tenant_id, kind=kind) for tenant_id, kind in self.changes])
        if version % _PRUNE_EVERY == 0:
            CatalogChange.objects.filter(created_at__lt=timezone.now() - timedelta(days=CHANGE_LOG_DAYS)).delete()
        log.debug("catalog version %s: %s", version, sorted(self.changes, key=str))


def audit_record(*, actor: Actor, action: str, target, tenant: Tenant | None = None, changes: dict | None = None) -> AuditEvent:
    """Append an audit event. `changes` must already be masked (see credentials.masking)."""
    return AuditEvent.objects.create(
        actor=actor.name[:200],
        tenant=tenant,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk or ""),
        target_repr=str(target)[:300],
        changes=changes or {},
        source=actor.source,
        ip=actor.ip,
    )


@transaction.atomic
def tenant_create(*, actor: Actor, name: str, slug: str, is_active: bool = True, monthly_budget=None,
                  credential_policy: str = "") -> Tenant:
    tenant = Tenant(name=name, slug=slug, is_active=is_active, monthly_budget=monthly_budget,
                    credential_policy=credential_policy)
    tenant.full_clean()
    tenant.save()
    audit_record(actor=actor, action="tenant.create", target=tenant, tenant=tenant,
                 changes={"name": [None, name], "slug": [None, slug], "is_active": [None, is_active],
                          **({"monthly_budget": [None, str(monthly_budget)]} if monthly_budget is not None else {}),
                          **({"credential_policy": [None, credential_policy]} if credential_policy else {})})
    catalog_bump(tenant)
    return tenant


@transaction.atomic
def tenant_update(*, actor: Actor, tenant: Tenant, **fields) -> Tenant:
    before = {k: getattr(tenant, k) for k in fields}
    for key, value in fields.items():
        setattr(tenant, key, value)
    tenant.full_clean()
    tenant.save()
    changes = {k: [before[k], v] for k, v in fields.items() if before[k] != v}
    if changes:
        audit_record(actor=actor, action="tenant.update", target=tenant, tenant=tenant, changes=changes)
        catalog_bump(tenant)
    return tenant


@transaction.atomic
def tenant_delete(*, actor: Actor, tenant: Tenant) -> None:
    """Delete a tenant with everything it owns (API keys, credentials, providers, models, memberships, usage).
    Its keys are refused by every gateway worker within CATALOG_REFRESH_SECONDS."""
    pk = tenant.pk
    view = {"name": tenant.name, "slug": tenant.slug, "is_active": tenant.is_active}
    tenant.delete()
    tenant.pk = pk  # so the audit event names the deleted tenant
    audit_record(actor=actor, action="tenant.delete", target=tenant, tenant=None, changes={"before": view})
    catalog_bump(pk)


@transaction.atomic
def membership_set(*, actor: Actor, tenant: Tenant, user, role: str) -> TenantMembership:
    membership, created = TenantMembership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    audit_record(actor=actor, action="membership.set", target=membership, tenant=tenant,
                 changes={"user": str(user), "role": role, "created": created})
    return membership


@transaction.atomic
def membership_remove(*, actor: Actor, membership: TenantMembership) -> None:
    tenant, pk = membership.tenant, membership.pk
    changes = {"user": str(membership.user), "role": membership.role}
    membership.delete()
    membership.pk = pk
    audit_record(actor=actor, action="membership.remove", target=membership, tenant=tenant, changes=changes)
