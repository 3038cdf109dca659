"""The one place that answers: which key does tenant T use for a provider, and where may that key go?

Order (DESIGN.md):
1. the tenant's own credential, if it has one. If it is incomplete or cannot be decrypted: an error,
   never a fallback to anyone else's key;
2. the tenant's credential policy (Tenant.credential_policy; empty = TENANT_CREDENTIALS_ENABLED: true = own,
   false = inherit). `own`: no credential = a clear error;
3. `inherit`: the provider's own active key (passed in by the caller, the providers app), then the
   global key from the environment (OPENAI_API_KEY, ..., VLLM_MODEL_URL/VLLM_API_KEY).

Keys are bound to endpoints, here and nowhere else:
- the global env key goes only to the endpoint configured with it (its *_API_BASE variable, else the type's
  default), so only to instance-level providers whose base URL is that endpoint;
- a provider's own key goes only to that provider's base URL;
- a tenant-owned provider is called only with its tenant's credential or its own keys, never with a shared key
  (global or instance-level), and never on behalf of another tenant;
- the result says whether its endpoint is tenant-controlled (`tenant_controlled`): then the egress policy's
  tenant rule applies when the call connects (credentials.egress).

Plaintext lives only in the returned object, for the duration of one call. Nothing here caches it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable

from . import crypto
from .models import TenantCredential
from .env_keys import env_names
from .masking import mask
from .provider_rules import EXTRA_OPENAI_COMPATIBLE, auth_present, call_settings, missing_fields


class CredentialError(Exception):
    """Resolution failed. The message names tenant and provider, never a key."""

    code = "credential_error"


class CredentialMissing(CredentialError):
    code = "credential_missing"


class CredentialInvalid(CredentialError):
    code = "credential_invalid"


class CredentialUndecryptable(CredentialError):
    code = "credential_undecryptable"


@dataclass(frozen=True, repr=False)
class ResolvedCredential:
    provider_type: str
    source: str  # tenant | provider_key | global_env | none
    api_key: str | None = None
    api_base: str | None = None
    api_version: str | None = None
    deployment_name: str | None = None
    settings: dict = field(default_factory=dict)  # the type's settings (region, project, ...), as LiteLLM takes them
    tenant_controlled: bool = False  # the endpoint was set by a tenant: the egress policy's tenant rule applies

    def __repr__(self):
        return (
            f"ResolvedCredential(provider_type={self.provider_type!r}, source={self.source!r}, "
            f"api_key={mask(self.api_key)!r}, api_base={self.api_base!r}, "
            f"tenant_controlled={self.tenant_controlled!r})"
        )

    __str__ = __repr__

    def litellm_kwargs(self) -> dict:
        """api_key, api_base and api_version for a LiteLLM call. A missing key goes as "none", so LiteLLM never
        falls back to a key of its own from the environment."""
        kwargs = {"api_key": self.api_key or "none"}
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_version:
            kwargs["api_version"] = self.api_version
        return kwargs


@dataclass(frozen=True)
class ProviderEndpoint:
    """The provider a call is for, as resolution needs it: its type, owner and configured endpoint."""

    provider_type: str
    owner_tenant_id: object | None = None  # None: an instance-level provider, configured by a sysadmin
    base_url: str = ""  # "" = the type's default endpoint
    api_version: str = ""
    label: str = ""
    settings: object = None  # the provider's stored settings (a Sealed JSON object, or a dict), opened per call

    def open_settings(self, *, secrets: bool = True) -> dict:
        """The provider's settings for a call; `secrets=False`: only the non-secret ones (region, project), which
        also apply to calls with a tenant's own credential. Never the operator's secret settings then."""
        stored = self.settings
        if stored is None:
            return {}
        try:
            values = stored.reveal() if hasattr(stored, "reveal") else stored
        except crypto.DecryptionError:
            raise CredentialUndecryptable(
                f"The settings of provider '{self.label or self.provider_type}' cannot be decrypted. Encryption "
                "key may be incorrect or data corrupted.") from None
        # operator-only settings (the server's identity) only on an instance-level provider's own calls
        return call_settings(self.provider_type, values if isinstance(values, dict) else {}, secrets=secrets,
                             operator_only=secrets and self.owner_tenant_id is None)


def _same_endpoint(a: str | None, b: str | None) -> bool:
    return (a or "").strip().rstrip("/").lower() == (b or "").strip().rstrip("/").lower()


def global_env_credential(provider_type: str) -> ResolvedCredential | None:
    key_var, base_var, version_var, deployment_var = env_names(provider_type)
    api_key = os.environ.get(key_var, "").strip() or None
    api_base = (os.environ.get(base_var, "").strip() if base_var else "") or None
    if provider_type == "azure" and not api_base:
        api_base = os.environ.get("AZURE_ENDPOINT", "").strip() or None
    if not api_key and not (provider_type == "hosted_vllm" and api_base):
        return None
    if provider_type in EXTRA_OPENAI_COMPATIBLE and not api_base:
        api_base = EXTRA_OPENAI_COMPATIBLE[provider_type]
    return ResolvedCredential(
        provider_type=provider_type,
        source="global_env",
        api_key=api_key,
        api_base=api_base,
        api_version=(os.environ.get(version_var, "").strip() or None) if version_var else None,
        deployment_name=(os.environ.get(deployment_var, "").strip() or None) if deployment_var else None,
    )


def _from_tenant_credential(cred: TenantCredential, tenant_label: str, endpoint: ProviderEndpoint) -> ResolvedCredential:
    ptype = cred.provider_type
    try:
        api_key = cred.api_key.reveal() if cred.api_key is not None else None
        extra = cred.extra.reveal() if cred.extra is not None else {}
    except crypto.DecryptionError:
        raise CredentialUndecryptable(
            f"Failed to decrypt credential for provider '{ptype}' (tenant '{tenant_label}'). "
            "Encryption key may be incorrect or data corrupted."
        ) from None
    own_settings = call_settings(ptype, extra if isinstance(extra, dict) else {})
    values = {
        **own_settings,
        "api_key": api_key or "",
        "endpoint": cred.endpoint,
        "api_version": cred.api_version,
        "deployment_name": cred.deployment_name,
    }
    missing = missing_fields(ptype, values)
    if missing:
        raise CredentialInvalid(
            f"The credential of tenant '{tenant_label}' for provider '{ptype}' is incomplete "
            f"(missing: {', '.join(missing)}). Replace it with PUT "
            f"/api/v1/sysadmin/tenants/<tenant_id>/credentials/{ptype}."
        )
    # The tenant's own key goes to the credential's endpoint, else to the provider's (an instance-level provider's
    # is the operator's; a tenant-owned provider's is the tenant's own), else to the type's default.
    api_base = cred.endpoint or endpoint.base_url or None
    if cred.endpoint:
        tenant_controlled = not cred.endpoint_approved
    else:
        tenant_controlled = endpoint.owner_tenant_id is not None and bool(endpoint.base_url)
    if ptype == "hosted_vllm" and not api_base:
        api_base = os.environ.get("VLLM_MODEL_URL", "").strip() or None
    if ptype in EXTRA_OPENAI_COMPATIBLE and not api_base:
        api_base = EXTRA_OPENAI_COMPATIBLE[ptype]
    return ResolvedCredential(
        provider_type=ptype,
        source="tenant",
        api_key=api_key,
        api_base=api_base,
        api_version=cred.api_version or endpoint.api_version or None,
        deployment_name=cred.deployment_name or None,
        # the provider's region/project (not its secrets) under the tenant's own settings
        settings={**endpoint.open_settings(secrets=False), **own_settings},
        tenant_controlled=tenant_controlled,
    )


def credential_resolve(
    *,
    tenant,
    provider_type: str,
    provider_fallback: Callable[[], str | None] | None = None,
    tenant_credential: TenantCredential | None | type(...) = ...,
    endpoint: ProviderEndpoint | None = None,
) -> ResolvedCredential:
    """Resolve the credential tenant `tenant` uses for a provider, bound to the endpoint it may be sent to.

    `endpoint` describes the provider (owner, base URL); without it, an instance-level provider at the type's
    default endpoint. `provider_fallback` returns the provider's own active key (plaintext) or None.
    `tenant_credential` may be passed when the caller already loaded the row (or knows there is none, with
    None) to save a query; by default it is looked up.
    `tenant=None` is an instance-level call (e.g. a sysadmin's connectivity test of an instance-level provider):
    no tenant credential and no strict mode, just the provider's key, then the global one.
    """
    endpoint = endpoint or ProviderEndpoint(provider_type=provider_type)
    owner = endpoint.owner_tenant_id
    if tenant is None:
        if owner is not None:
            raise CredentialMissing("A tenant-owned provider is only called on behalf of its tenant.")
        return _shared_fallback(provider_type, provider_fallback, endpoint, "instance level: the provider has no "
                                                                          "active key and no global key is set")
    tenant_label = getattr(tenant, "slug", None) or str(tenant)
    if owner is not None and owner != tenant.pk:
        raise CredentialMissing(f"Provider '{endpoint.label or provider_type}' belongs to another tenant: it is "
                                f"never called with tenant '{tenant_label}''s credentials.")
    if tenant_credential is ...:
        tenant_credential = TenantCredential.objects.filter(tenant=tenant, provider_type=provider_type).first()
    if tenant_credential is not None:
        return _from_tenant_credential(tenant_credential, tenant_label, endpoint)
    if tenant.effective_credential_policy == "own":
        raise CredentialMissing(
            f"No API key configured for provider '{provider_type}' (tenant '{tenant_label}'). "
            "Tenant-specific credentials are enabled - each tenant must configure their own credentials. "
            f"A sysadmin can set one with PUT /api/v1/sysadmin/tenants/<tenant_id>/credentials/{provider_type}."
        )
    if owner is not None:
        key = provider_fallback() if provider_fallback is not None else None
        settings = endpoint.open_settings()
        if key is None and not auth_present(provider_type, None, settings, ambient=False):
            raise CredentialMissing(
                f"No API key for provider '{endpoint.label or provider_type}' (tenant '{tenant_label}'): it belongs "
                "to the tenant and has no active key of its own. Shared keys (the global key, instance-level "
                "providers' keys) are never sent to an endpoint a tenant configured: add a key to the provider, "
                f"or have a sysadmin set the tenant's credential for '{provider_type}'."
            )
        return _provider_key(provider_type, key, endpoint, settings, tenant_controlled=True)
    return _shared_fallback(provider_type, provider_fallback, endpoint, f"tenant '{tenant_label}': the tenant has "
                                                                        "no credential, the provider has no active "
                                                                        "key and no global key is set")


def _provider_key(provider_type: str, key: str | None, endpoint: ProviderEndpoint, settings: dict, *,
                  tenant_controlled: bool):
    """A provider's own key and settings: sent only to that provider's base URL (or the type's default)."""
    api_base = endpoint.base_url or EXTRA_OPENAI_COMPATIBLE.get(provider_type) or None
    return ResolvedCredential(provider_type=provider_type, source="provider_key", api_key=key, api_base=api_base,
                              api_version=endpoint.api_version or None, settings=settings,
                              tenant_controlled=tenant_controlled)


def _shared_fallback(provider_type: str, provider_fallback, endpoint: ProviderEndpoint, why: str):
    """Instance-level provider, shared mode: its own active key, then the global environment key (only where
    the provider's endpoint is the one configured with that key), else a clear error."""
    key = provider_fallback() if provider_fallback is not None else None
    settings = endpoint.open_settings()
    if key is not None or auth_present(provider_type, None, settings, ambient=True):
        return _provider_key(provider_type, key, endpoint, settings, tenant_controlled=False)
    resolved = global_env_credential(provider_type)
    if resolved is None:
        raise CredentialMissing(
            f"No API key configured for provider '{provider_type}' ({why}: {env_names(provider_type)[0]})."
        )
    if endpoint.base_url and not _same_endpoint(endpoint.base_url, resolved.api_base):
        key_var, base_var = env_names(provider_type)[:2]
        bound_to = resolved.api_base or f"the default '{provider_type}' endpoint"
        raise CredentialMissing(
            f"No API key for provider '{endpoint.label or provider_type}': the global key {key_var} is only sent "
            f"to the endpoint configured with it ({bound_to}{f', {base_var}' if base_var else ''}), and this "
            "provider points elsewhere. Add a key to the provider."
        )
    return replace(resolved, api_version=resolved.api_version or endpoint.api_version or None, settings=settings)
