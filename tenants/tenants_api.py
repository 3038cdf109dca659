"""Sysadmin API: tenants and their members, for the automation that provisions them. Auth: the super API key in
X-API-Key. Every change goes through tenants.services (audited; a deleted or deactivated tenant's keys are refused
by every gateway worker within CATALOG_REFRESH_SECONDS), the same services admin uses."""

from datetime import datetime
from decimal import Decimal
from typing import Literal, Optional
from uuid import UUID

from django.contrib.auth import get_user_model
from django.db.models import Q
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.pagination import paginate
from pydantic import ConfigDict

from . import services
from .api import tenant_or_404
from .auth import super_api_key
from .models import Tenant, TenantMembership
from .pagination import Pagination
from .schemas import ErrorOut, NoNulIn

router = Router(tags=["sysadmin: tenants"], auth=super_api_key)

ERRORS = {401: ErrorOut, 404: ErrorOut, 422: ErrorOut}
Budget = Optional[Decimal]
Policy = Optional[Literal["own", "inherit"]]
POLICY_HELP = ("own: the tenant must configure a credential per provider type (no fallback); inherit: its credential "
               "if present, else the shared key (never when its own credential exists but is broken); null: the "
               "instance default (TENANT_CREDENTIALS_ENABLED).")


class TenantIn(NoNulIn):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, description="Display name (unique).")
    slug: str = Field(..., min_length=1, max_length=100, pattern=r"^[-a-zA-Z0-9_]+$",
                      description="Short unique identifier (letters, digits, - and _).")
    is_active: bool = Field(True, description="Inactive tenants cannot call models; their data is kept.")
    monthly_budget: Budget = Field(None, ge=0, max_digits=12, decimal_places=2,
                                   description="Spending cap per calendar month (UTC); null = no cap.")
    credential_policy: Policy = Field(None, description=POLICY_HELP)


class TenantPatch(NoNulIn):
    """Only the fields sent change; `monthly_budget: null` removes the cap."""

    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = Field(None, min_length=1, max_length=200)
    slug: Optional[str] = Field(None, min_length=1, max_length=100, pattern=r"^[-a-zA-Z0-9_]+$")
    is_active: Optional[bool] = None
    monthly_budget: Budget = Field(None, ge=0, max_digits=12, decimal_places=2)
    credential_policy: Policy = Field(None, description=POLICY_HELP)


class TenantOut(NoNulIn):
    id: UUID
    name: str
    slug: str
    is_active: bool
    monthly_budget: Budget = Field(..., description="Decimal string; null = no cap.")
    credential_policy: Policy = Field(..., description="As set; null = the instance default.")
    effective_credential_policy: Literal["own", "inherit"] = Field(..., description="What applies now.")
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_credential_policy(obj):
        return obj.credential_policy or None


class MemberIn(NoNulIn):
    model_config = ConfigDict(extra="forbid")

    role: TenantMembership.Role = Field(..., description="member or admin (tenant admins manage the tenant's "
                                                         "providers and credentials in admin).")


class MemberOut(NoNulIn):
    username: str
    role: str


@router.post("/tenants", response={201: TenantOut, **ERRORS})
def create_tenant(request, payload: TenantIn):
    """Create a tenant. Then give it API keys (/sysadmin/tenants/{id}/api-keys), credentials and members."""
    fields = payload.model_dump()
    fields["credential_policy"] = fields["credential_policy"] or ""
    tenant = services.tenant_create(actor=request.auth, **fields)
    tenant.refresh_from_db()  # the budget as stored (2 decimals)
    return Status(201, tenant)


class TenantFilters(Schema):
    q: str = Field("", max_length=200, description="Part of the name or slug.")
    is_active: Optional[bool] = None


@router.get("/tenants", response={200: list[TenantOut], **ERRORS})
@paginate(Pagination)
def list_tenants(request, filters: Query[TenantFilters]):
    """Every tenant, by name."""
    tenants = Tenant.objects.order_by("name")
    if filters.q:
        tenants = tenants.filter(Q(name__icontains=filters.q) | Q(slug__icontains=filters.q))
    if filters.is_active is not None:
        tenants = tenants.filter(is_active=filters.is_active)
    return tenants


@router.get("/tenants/{tenant_id}", response={200: TenantOut, **ERRORS})
def get_tenant(request, tenant_id: UUID):
    return tenant_or_404(tenant_id)


@router.patch("/tenants/{tenant_id}", response={200: TenantOut, **ERRORS})
def update_tenant(request, tenant_id: UUID, payload: TenantPatch):
    """Change what is sent. Deactivating a tenant refuses its API keys at once; reactivating restores them."""
    tenant = tenant_or_404(tenant_id)
    fields = payload.model_dump(exclude_unset=True)
    for name in ("name", "slug", "is_active"):
        if name in fields and fields[name] is None:
            raise HttpError(422, f"{name}: may not be null.")
    if "credential_policy" in fields:
        fields["credential_policy"] = fields["credential_policy"] or ""
    tenant = services.tenant_update(actor=request.auth, tenant=tenant, **fields)
    tenant.refresh_from_db()  # the budget as stored (2 decimals)
    return tenant


@router.delete("/tenants/{tenant_id}", response={204: None, **ERRORS})
def delete_tenant(request, tenant_id: UUID):
    """Delete the tenant with everything it owns (API keys, credentials, providers, models, members, usage). The
    audit log keeps the record of it. Not reversible."""
    services.tenant_delete(actor=request.auth, tenant=tenant_or_404(tenant_id))
    return Status(204, None)


@router.get("/tenants/{tenant_id}/members", response={200: list[MemberOut], **ERRORS})
@paginate(Pagination)
def list_members(request, tenant_id: UUID):
    tenant = tenant_or_404(tenant_id)
    return [MemberOut(username=m.user.get_username(), role=m.role)
            for m in tenant.memberships.select_related("user").order_by("user__username")]


@router.put("/tenants/{tenant_id}/members/{username}", response={200: MemberOut, **ERRORS})
def set_member(request, tenant_id: UUID, username: str, payload: MemberIn):
    """Make an existing user a member (or admin) of the tenant, or change their role."""
    tenant = tenant_or_404(tenant_id)
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise HttpError(404, f"User {username[:150]} not found.")
    membership = services.membership_set(actor=request.auth, tenant=tenant, user=user, role=payload.role)
    return MemberOut(username=user.get_username(), role=membership.role)


@router.delete("/tenants/{tenant_id}/members/{username}", response={204: None, **ERRORS})
def remove_member(request, tenant_id: UUID, username: str):
    """Remove the user from the tenant (the user account stays). Idempotent."""
    tenant = tenant_or_404(tenant_id)
    membership = tenant.memberships.filter(user__username=username).first()
    if membership is not None:
        services.membership_remove(actor=request.auth, membership=membership)
    return Status(204, None)
