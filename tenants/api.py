"""Sysadmin API: tenant API keys (create, list, revoke). Auth: the super API key in X-API-Key.

A new key's plaintext is returned once, by the create call; afterwards only its prefix is shown.
"""

from uuid import UUID

from ninja import Router, Status
from ninja.errors import HttpError
from ninja.pagination import paginate

from .api_keys import api_key_create, api_key_revoke
from .auth import super_api_key
from .models import Tenant
from .pagination import Pagination
from .schemas import ApiKeyCreatedOut, ApiKeyIn, ApiKeyOut, ErrorOut
from .selectors import tenant_get

router = Router(tags=["sysadmin: tenant API keys"], auth=super_api_key)

ERRORS = {401: ErrorOut, 404: ErrorOut, 422: ErrorOut}


def tenant_or_404(tenant_id: UUID) -> Tenant:
    """The tenant, or a 404 naming the id (sysadmin routes under /sysadmin/tenants/{tenant_id})."""
    tenant = tenant_get(tenant_id=tenant_id)
    if tenant is None:
        raise HttpError(404, f"Tenant {tenant_id} not found.")
    return tenant


@router.post("/tenants/{tenant_id}/api-keys", response={201: ApiKeyCreatedOut, **ERRORS})
def create_api_key(request, tenant_id: UUID, payload: ApiKeyIn):
    """Create an API key for the tenant. The response holds the key itself: it is shown only once."""
    created = api_key_create(actor=request.auth, tenant=tenant_or_404(tenant_id), name=payload.name.strip(),
                             scopes=payload.scopes, expires_at=payload.expires_at)
    shown_once = {"api_key": created.plaintext, "message": "Store this key now: it is shown only once."}
    return Status(201, {**ApiKeyOut.model_validate(created.api_key).model_dump(), **shown_once})


@router.get("/tenants/{tenant_id}/api-keys", response={200: list[ApiKeyOut], **ERRORS})
@paginate(Pagination)
def list_api_keys(request, tenant_id: UUID):
    """The tenant's API keys (revoked ones included), by name. Never the key itself: only its prefix."""
    return tenant_or_404(tenant_id).api_keys.order_by("name", "id")


@router.delete("/tenants/{tenant_id}/api-keys/{key_id}", response={204: None, **ERRORS})
def revoke_api_key(request, tenant_id: UUID, key_id: int):
    """Revoke a key: it is rejected from now on. The row stays for the audit trail. Idempotent."""
    key = tenant_or_404(tenant_id).api_keys.filter(pk=key_id).first()
    if key is None:
        raise HttpError(404, f"API key {key_id} not found for this tenant.")
    if key.is_active:
        api_key_revoke(actor=request.auth, api_key=key)
    return Status(204, None)
