from __future__ import annotations

from django.db import transaction

from .actors import Actor
from .models import AuditEvent, Tenant, TenantMembership


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
def tenant_create(*, actor: Actor, name: str, slug: str, is_active: bool = True) -> Tenant:
    tenant = Tenant(name=name, slug=slug, is_active=is_active)
    tenant.full_clean()
    tenant.save()
    audit_record(actor=actor, action="tenant.create", target=tenant, tenant=tenant,
                 changes={"name": [None, name], "slug": [None, slug], "is_active": [None, is_active]})
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
    return tenant


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
