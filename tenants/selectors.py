from __future__ import annotations

import uuid

from .models import Tenant


def tenant_get(*, tenant_id) -> Tenant | None:
    try:
        return Tenant.objects.get(pk=uuid.UUID(str(tenant_id)))
    except (Tenant.DoesNotExist, ValueError):
        return None


def tenants_for_user(user):
    if user.is_superuser:
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user=user)
