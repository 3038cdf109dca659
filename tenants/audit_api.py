"""REST: the audit log (GET /api/v1/audit-events). Read-only, like the log itself.

The super key (X-API-Key) reads every tenant's events (filter with tenant_id); a tenant API key with the scope
audit:ReadAuditEvents reads its own tenant's only. `changes` holds masked values (never a secret).
"""
from datetime import datetime
from typing import Any, Optional
from uuid import UUID

from ninja import Field, FilterSchema, Query, Router, Schema
from ninja.errors import HttpError
from ninja.pagination import paginate

from .actors import Actor
from .auth import tenant_key_auth
from .pagination import Pagination
from .schemas import ErrorOut, NoNulIn, UtcDatetime
from .scopes import Scope
from .selectors import audit_list, tenant_get

AUDIT_SCOPE = Scope.AUDIT

router = Router(tags=["audit"], auth=tenant_key_auth)


class AuditFilters(FilterSchema, NoNulIn):
    tenant_id: Optional[UUID] = Field(None, description="Sysadmin only: one tenant's events.")
    action: Optional[str] = Field(None, max_length=100, description="e.g. credential.set, provider_key.disable.")
    actor: Optional[str] = Field(None, max_length=200, description="e.g. super-api-key, api-key:<prefix>, a user.")
    target_type: Optional[str] = Field(None, max_length=100, description="e.g. credentials.tenantcredential.")
    target_id: Optional[str] = Field(None, max_length=100)
    source: Optional[str] = Field(None, max_length=20, description="admin, api, command, task or system.")
    since: Optional[UtcDatetime] = Field(None, description="From this time (inclusive, ISO 8601).")
    until: Optional[UtcDatetime] = Field(None, description="Up to this time (exclusive).")


class AuditEventOut(Schema):
    id: int
    created_at: datetime
    actor: str
    tenant_id: Optional[UUID]
    action: str
    target_type: str
    target_id: str
    target_repr: str
    changes: dict[str, Any] = Field(..., description="Masked before/after values.")
    source: str
    ip: Optional[str]


@router.get("", response={200: list[AuditEventOut], 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut})
@paginate(Pagination)
def list_audit_events(request, filters: Query[AuditFilters]):
    """Audit events, newest first. Tenant keys (scope audit:ReadAuditEvents) see their own tenant only."""
    data = filters.model_dump()
    tenant_id = data.pop("tenant_id")
    auth = request.auth
    if isinstance(auth, Actor) and auth.is_sysadmin:
        tenant = None
        if tenant_id is not None:
            tenant = tenant_get(tenant_id=tenant_id)
            if tenant is None:
                raise HttpError(404, f"Tenant {tenant_id} not found.")
        return audit_list(tenant=tenant, all_tenants=True, **data)
    if not auth.has_scope(AUDIT_SCOPE):
        raise HttpError(403, f"This API key lacks the scope {AUDIT_SCOPE}")
    return audit_list(tenant=auth.tenant, **data)
