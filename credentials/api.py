"""Sysadmin API: tenant credentials (Eneo's contract). Auth: the super API key in X-API-Key."""
from __future__ import annotations

from uuid import UUID

from ninja import Router

from tenants.actors import Actor
from tenants.api import tenant_or_404
from tenants.auth import super_api_key
from tenants.schemas import ErrorOut

from . import selectors, services
from .schemas import CredentialDeleteOut, CredentialIn, CredentialListOut, CredentialSetOut

router = Router(tags=["sysadmin: tenant credentials"], auth=super_api_key)

ERRORS = {401: ErrorOut, 404: ErrorOut, 422: ErrorOut}


@router.get("/tenants/{tenant_id}/credentials", response={200: CredentialListOut, **ERRORS})
def list_credentials(request, tenant_id: UUID):
    """List a tenant's credentials: masked key, status and non-secret fields. Never the key itself."""
    tenant = tenant_or_404(tenant_id)
    services.credential_list_viewed(actor=request.auth, tenant=tenant)
    rows = [
        {
            "provider": c.provider_type,
            "masked_key": c.masked_key,
            "configured_at": c.configured_at,
            "updated_at": c.updated_at,
            "encryption_status": c.encryption_status,
            "endpoint": c.endpoint,
            "api_version": c.api_version,
            "deployment_name": c.deployment_name,
            "has_extra": c.extra is not None,
            "settings": shown,
            "secret_settings": hidden,
        }
        for c in selectors.credential_list(tenant=tenant)
        for shown, hidden in [selectors.credential_public_settings(c)]
    ]
    return {"tenant_id": tenant.pk, "credentials": rows}


@router.put("/tenants/{tenant_id}/credentials/{provider}", response={200: CredentialSetOut, **ERRORS})
def put_credential(request, tenant_id: UUID, provider: str, payload: CredentialIn):
    """Create or replace the tenant's credential for `provider` (case-insensitive; `vllm` = `hosted_vllm`).

    The whole entry is replaced. azure requires api_key, endpoint, api_version and deployment_name (calls of the
    tenant go to that deployment). Further settings of the type go in `extra` (GET /api/v1/provider-types/{type}
    lists them: e.g. bedrock's aws_region_name, aws_access_key_id and aws_secret_access_key, vertex_ai's
    vertex_project, vertex_location and vertex_credentials); each missing or invalid field is named in the 422.
    """
    tenant = tenant_or_404(tenant_id)
    actor: Actor = request.auth
    cred = services.credential_set(actor=actor, tenant=tenant, provider_type=provider, **payload.dict())
    return {
        "tenant_id": tenant.pk,
        "provider": cred.provider_type,
        "masked_key": cred.masked_key,
        "message": f"Credential for provider '{cred.provider_type}' set for tenant '{tenant.slug}'.",
        "set_at": cred.configured_at,
    }


@router.delete("/tenants/{tenant_id}/credentials/{provider}", response={200: CredentialDeleteOut, **ERRORS})
def delete_credential(request, tenant_id: UUID, provider: str):
    """Delete the tenant's credential for `provider`. Idempotent: 200 even when none was stored."""
    tenant = tenant_or_404(tenant_id)
    deleted = services.credential_delete(actor=request.auth, tenant=tenant, provider_type=provider)
    from .provider_rules import normalise_provider_type

    ptype = normalise_provider_type(provider)
    message = (
        f"Credential for provider '{ptype}' deleted." if deleted else f"No credential for provider '{ptype}' was stored."
    )
    return {"tenant_id": tenant.pk, "provider": ptype, "deleted": deleted, "message": message}
