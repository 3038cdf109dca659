"""REST API: the provider-type registry (/provider-types) and providers with their models and keys (/ai-providers).

Auth: a tenant API key (`Authorization: Bearer eneo_...` or `X-API-Key: eneo_...`) or the super API key in
X-API-Key (a sysadmin, who sees everything and has every scope). Every ai-providers call needs a scope on the
key. What a caller may see or change is decided by providers.selectors only: something not visible is a 404,
something visible but not changeable is a 403. Handlers parse, call one service or selector, and render.
"""

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.http import HttpRequest
from ninja import Query, Router, Status
from ninja.errors import ValidationError as NinjaValidationError
from ninja.pagination import paginate

from credentials.provider_rules import UnknownProviderType, normalise_provider_type
from tenants.actors import Actor
from tenants.auth import tenant_key_auth
from tenants.models import TenantApiKey
from tenants.pagination import Pagination
from tenants.schemas import ErrorOut
from tenants.scopes import Scope
from tenants.selectors import tenant_get

from providers import selectors, services
from providers.models import AIModel, Provider
from providers.provider_types import all_specs, get_spec
from providers.api.schemas import (
    EnablementOut,
    KeyIn,
    KeyOut,
    KeyPatch,
    ModelIn,
    ModelOut,
    ModelPatch,
    ProviderFilters,
    ProviderIn,
    ProviderOut,
    ProviderPatch,
    ProviderTypeDetailOut,
    ProviderTypeOut,
)
from providers.selectors import Forbidden, NotFound, Principal

ERRORS = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut}
WRITE_ERRORS = {**ERRORS, 409: ErrorOut}
NO_CONTENT = {204: None, **WRITE_ERRORS}


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request: whose view (principal) and who to name in the audit (actor)."""

    principal: Principal
    actor: Actor
    api_key: TenantApiKey | None  # None = the sysadmin (super API key)


def api_caller(request: HttpRequest, scope: Scope) -> Caller:
    """The caller, if its key holds `scope` (else 403)."""
    return caller_for(request.auth, scope, ip=request.META.get("REMOTE_ADDR"), source="api")


def caller_for(auth: TenantApiKey | Actor, scope: Scope, *, ip: str | None, source: str) -> Caller:
    """The caller behind an authenticated key (REST: source "api"; MCP: "mcp"), if the key holds `scope` (else
    Forbidden naming the scope). The super key's Actor is the sysadmin, with every scope."""
    if isinstance(auth, Actor) and auth.is_sysadmin:
        actor = auth if auth.source == source else Actor(name=auth.name, source=source, ip=ip, is_sysadmin=True)
        return Caller(principal=Principal(is_sysadmin=True), actor=actor, api_key=None)
    key: TenantApiKey = auth
    if not key.has_scope(scope):
        raise Forbidden(f"This API key lacks the scope {scope.value}")
    actor = Actor(name=f"api-key:{key.prefix}", source=source, ip=ip)
    return Caller(principal=Principal(tenant=key.tenant), actor=actor, api_key=key)


def _blank_nulls(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """null for a text field means empty (the columns are NOT NULL)."""
    return {k: ("" if v is None and k in names else v) for k, v in data.items()}


def _model_fields(payload: ModelIn | ModelPatch) -> dict[str, Any]:
    """Service keyword arguments from the fields sent in a model body (`model_config` travels under an alias)."""
    data = payload.model_dump(exclude_unset=True)
    if "model_config_" in data:
        data["model_config"] = data.pop("model_config_")
    return _blank_nulls(data, "display_label", "alias")


def _provider_out(caller: Caller, provider: Provider) -> Provider:
    """The provider re-read with the counts and active key ProviderOut shows."""
    return selectors.provider_search(principal=caller.principal).get(pk=provider.pk)


def provider_for(caller: Caller, provider_id: str, action: str = "view") -> Provider:
    return selectors.provider_get(principal=caller.principal, public_id=provider_id, action=action)


def model_for(caller: Caller, provider_id: str, model_pk: int, action: str = "view") -> AIModel:
    """A model of a provider the caller may see (404 otherwise), if `action` is allowed on it (403 otherwise)."""
    return selectors.model_get(principal=caller.principal, provider=provider_for(caller, provider_id), pk=model_pk,
                               action=action)


# --- /provider-types ---------------------------------------------------------------------------------------

types_router = Router(tags=["provider types"], auth=tenant_key_auth)
TYPE_ERRORS = {401: ErrorOut, 404: ErrorOut}


@types_router.get("", response={200: list[ProviderTypeOut], 401: ErrorOut})
def list_provider_types(request):
    """Every provider type (all of LiteLLM's providers and a few OpenAI-compatible services).

    Each type lists the fields a provider of that type takes, which are required and which are secret
    (write-only), and how many models LiteLLM's registry knows for it.
    """
    return all_specs()


@types_router.get("/{provider_type}", response={200: ProviderTypeDetailOut, **TYPE_ERRORS})
def get_provider_type(request, provider_type: str):
    """One provider type with LiteLLM's known models: context window, capabilities and price per 1M tokens.

    The type is case-insensitive and `vllm` is an alias of `hosted_vllm`.
    """
    try:
        return get_spec(normalise_provider_type(provider_type))
    except UnknownProviderType as exc:
        raise NotFound(str(exc)) from None


# --- /ai-providers -----------------------------------------------------------------------------------------

router = Router(tags=["ai providers"], auth=tenant_key_auth)


@router.get("", response={200: list[ProviderOut], **ERRORS})
@paginate(Pagination)
def list_providers(request, filters: Query[ProviderFilters]):
    """Providers the caller may see, by name. Scope: aiProviders:ListAiProviders.

    A tenant key sees its tenant's providers, instance-wide ones and instance-level providers with a model
    enabled for its tenant.
    """
    return provider_list_for(api_caller(request, Scope.LIST), filters)


def provider_list_for(caller: Caller, filters: ProviderFilters):
    provider_type = None
    if filters.provider_type:
        try:
            provider_type = normalise_provider_type(filters.provider_type)
        except UnknownProviderType as exc:
            raise NinjaValidationError([{"loc": ["query", "provider_type"], "msg": str(exc),
                                         "type": "value_error"}]) from None
    return selectors.provider_search(principal=caller.principal, provider_type=provider_type,
                                     status=filters.status, health_status=filters.health_status, q=filters.q)


@router.post("", response={201: ProviderOut, **WRITE_ERRORS})
def create_provider(request, payload: ProviderIn):
    """Create a provider, optionally with its first API key and its models (all or nothing).

    Scope: aiProviders:CreateAiProvider. A tenant key creates in its own tenant, owned by the key's creator;
    the sysadmin may set `tenant_id` (null = instance level) and `instance_wide`. 409 on a duplicate name.
    """
    return Status(201, provider_create_for(api_caller(request, Scope.CREATE), payload))


def provider_create_for(caller: Caller, payload: ProviderIn) -> Provider:
    """Create as REST and MCP do: a tenant key in its own tenant, owned by the key's creator; the sysadmin where
    `tenant_id` says (null = instance level)."""
    data = payload.model_dump(exclude={"tenant_id", "models"})
    models = [_model_fields(m) for m in payload.models]
    if caller.api_key is None:
        tenant, owner = None, None
        if payload.tenant_id is not None:
            tenant = tenant_get(tenant_id=payload.tenant_id)
            if tenant is None:
                raise NinjaValidationError([{"loc": ["body", "tenant_id"], "msg": "No tenant with this id.",
                                             "type": "value_error"}])
    else:
        tenant, owner = caller.api_key.tenant, caller.api_key.created_by
        if payload.tenant_id not in (None, tenant.pk):
            raise Forbidden("A tenant API key creates providers in its own tenant only.")
    provider = services.provider_create(actor=caller.actor, tenant=tenant, owner=owner, models=models, **data)
    return _provider_out(caller, provider)


@router.get("/{provider_id}", response={200: ProviderOut, **ERRORS})
def get_provider(request, provider_id: str):
    """One provider by its public id (aip_...). Scope: aiProviders:GetAiProvider."""
    caller = api_caller(request, Scope.GET)
    return _provider_out(caller, provider_for(caller, provider_id))


@router.patch("/{provider_id}", response={200: ProviderOut, **WRITE_ERRORS})
def update_provider(request, provider_id: str, payload: ProviderPatch):
    """Change a provider: only the fields sent. `config` replaces the stored config (null clears it).

    Scope: aiProviders:UpdateAiProvider. 403 when the caller may see the provider but not change it.
    """
    return provider_update_for(api_caller(request, Scope.UPDATE), provider_id, payload)


def provider_update_for(caller: Caller, provider_id: str, payload: ProviderPatch) -> Provider:
    provider = provider_for(caller, provider_id, "change")
    fields = _blank_nulls(payload.model_dump(exclude_unset=True), "base_url", "api_version")
    services.provider_update(actor=caller.actor, provider=provider, **fields)
    return _provider_out(caller, provider)


@router.delete("/{provider_id}", response=NO_CONTENT)
def delete_provider(request, provider_id: str, force: bool = False):
    """Delete a provider, its keys and (with force=true) its models. Scope: aiProviders:DeleteAiProvider.

    Without force, a provider that still has models is a 409 that says how many.
    """
    caller = api_caller(request, Scope.DELETE)
    services.provider_delete(actor=caller.actor, provider=provider_for(caller, provider_id, "delete"), force=force)
    return Status(204, None)


# --- /ai-providers/{id}/models -----------------------------------------------------------------------------

@router.get("/{provider_id}/models", response={200: list[ModelOut], **ERRORS})
@paginate(Pagination)
def list_models(request, provider_id: str):
    """The provider's models the caller may see. Scope: aiProviders:GetAiProvider."""
    caller = api_caller(request, Scope.GET)
    return selectors.model_list(principal=caller.principal, provider=provider_for(caller, provider_id))


@router.post("/{provider_id}/models", response={201: ModelOut, **WRITE_ERRORS})
def create_model(request, provider_id: str, payload: ModelIn):
    """Add a model. Unset capabilities, context window and prices come from LiteLLM's registry.

    Scope: aiProviders:UpdateAiProvider. 409 when the provider already has this model_id.
    """
    return Status(201, model_create_for(api_caller(request, Scope.UPDATE), provider_id, payload))


def model_create_for(caller: Caller, provider_id: str, payload: ModelIn) -> AIModel:
    provider = provider_for(caller, provider_id, "change")
    return services.model_create(actor=caller.actor, provider=provider, **_model_fields(payload))


@router.get("/{provider_id}/models/{model_pk}", response={200: ModelOut, **ERRORS})
def get_model(request, provider_id: str, model_pk: int):
    """One model of the provider. Scope: aiProviders:GetAiProvider."""
    caller = api_caller(request, Scope.GET)
    return model_for(caller, provider_id, model_pk)


@router.patch("/{provider_id}/models/{model_pk}", response={200: ModelOut, **WRITE_ERRORS})
def update_model(request, provider_id: str, model_pk: int, payload: ModelPatch):
    """Change a model: only the fields sent; model_config replaces the stored one (null clears it).

    Scope: aiProviders:UpdateAiProvider.
    """
    caller = api_caller(request, Scope.UPDATE)
    model = model_for(caller, provider_id, model_pk, "change")
    return services.model_update(actor=caller.actor, model=model, **_model_fields(payload))


@router.delete("/{provider_id}/models/{model_pk}", response=NO_CONTENT)
def delete_model(request, provider_id: str, model_pk: int):
    """Delete a model. Scope: aiProviders:UpdateAiProvider."""
    caller = api_caller(request, Scope.UPDATE)
    model = model_for(caller, provider_id, model_pk, "change")
    services.model_delete(actor=caller.actor, model=model)
    return Status(204, None)


def _set_enablement(request, provider_id: str, model_pk: int, tenant_id: UUID, *, enabled: bool) -> dict:
    return model_enablement_for(api_caller(request, Scope.UPDATE), provider_id, model_pk, tenant_id, enabled=enabled)


def model_enablement_for(caller: Caller, provider_id: str, model_pk: int, tenant_id: UUID, *, enabled: bool) -> dict:
    model = model_for(caller, provider_id, model_pk)  # invisible to the caller: 404 before anything else
    if caller.api_key is not None:
        raise Forbidden("Only the sysadmin (super API key) enables instance-level models for tenants.")
    tenant = tenant_get(tenant_id=tenant_id)
    if tenant is None:
        raise NotFound(f"Tenant {tenant_id} not found.")
    services.model_set_tenant_enabled(actor=caller.actor, model=model, tenant=tenant, enabled=enabled)
    return {"provider_id": model.provider.public_id, "model_pk": model.pk, "tenant_id": tenant.pk, "enabled": enabled}


ENABLEMENT = "/{provider_id}/models/{model_pk}/tenants/{tenant_id}"


@router.post(ENABLEMENT, response={200: EnablementOut, **WRITE_ERRORS})
def enable_model_for_tenant(request, provider_id: str, model_pk: int, tenant_id: UUID):
    """Let a tenant use an instance-level model. Sysadmin only (super API key). Idempotent."""
    return _set_enablement(request, provider_id, model_pk, tenant_id, enabled=True)


@router.delete(ENABLEMENT, response={200: EnablementOut, **WRITE_ERRORS})
def disable_model_for_tenant(request, provider_id: str, model_pk: int, tenant_id: UUID):
    """Stop a tenant from using an instance-level model. Sysadmin only (super API key). Idempotent."""
    return _set_enablement(request, provider_id, model_pk, tenant_id, enabled=False)


# --- /ai-providers/{id}/keys -------------------------------------------------------------------------------

@router.get("/{provider_id}/keys", response={200: list[KeyOut], **ERRORS})
@paginate(Pagination)
def list_keys(request, provider_id: str):
    """The provider's API keys, masked ('...abcd'); active and newest first. Scope: aiProviders:GetAiProvider."""
    caller = api_caller(request, Scope.GET)
    return selectors.provider_key_list(provider=provider_for(caller, provider_id))


@router.post("/{provider_id}/keys", response={201: KeyOut, **WRITE_ERRORS})
def add_key(request, provider_id: str, payload: KeyIn):
    """Add an API key; the newest active key is the one used. Scope: aiProviders:UpdateAiProvider.

    To rotate without downtime: add the new key, check it works, then disable the old one (PATCH is_active).
    """
    caller = api_caller(request, Scope.UPDATE)
    provider = provider_for(caller, provider_id, "change")
    return Status(201, services.provider_key_add(actor=caller.actor, provider=provider, **payload.model_dump()))


@router.patch("/{provider_id}/keys/{key_id}", response={200: KeyOut, **WRITE_ERRORS})
def update_key(request, provider_id: str, key_id: int, payload: KeyPatch):
    """Relabel a key or enable/disable it. Scope: aiProviders:UpdateAiProvider."""
    caller = api_caller(request, Scope.UPDATE)
    key = selectors.provider_key_get(provider=provider_for(caller, provider_id, "change"), key_id=key_id)
    return services.provider_key_update(actor=caller.actor, key=key, **payload.model_dump())


@router.delete("/{provider_id}/keys/{key_id}", response=NO_CONTENT)
def delete_key(request, provider_id: str, key_id: int):
    """Delete a key for good. Scope: aiProviders:UpdateAiProvider."""
    caller = api_caller(request, Scope.UPDATE)
    key = selectors.provider_key_get(provider=provider_for(caller, provider_id, "change"), key_id=key_id)
    services.provider_key_delete(actor=caller.actor, key=key)
    return Status(204, None)
