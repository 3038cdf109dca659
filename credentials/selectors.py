from __future__ import annotations

from tenants.models import Tenant

from .models import TenantCredential


def credential_list(*, tenant: Tenant):
    return TenantCredential.objects.filter(tenant=tenant).order_by("provider_type")
