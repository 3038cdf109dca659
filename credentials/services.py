from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from tenants.actors import Actor
from tenants.models import Tenant
from tenants.services import audit_record, catalog_bump

from . import crypto
from .egress import endpoint_allowed
from .fields import Sealed
from .masking import last4_of
from .models import TenantCredential
from .provider_rules import SettingsError, check_settings, normalise_provider_type, requirements_for


KEEP = object()  # admin edits: "keep the stored extra settings"


def endpoint_validate(endpoint: str, *, tenant_controlled: bool = True) -> str:
    """A clean http(s) base URL, or "" for none. Credentials in the URL are not allowed (they would be stored and
    shown in clear). A tenant-controlled endpoint must pass the egress policy (credentials.egress): a public
    address or ENDPOINT_ALLOWED_HOSTS. Operators' endpoints may be internal (http://vllm:8000/v1)."""
    endpoint = (endpoint or "").strip()
    if not endpoint:
        return ""
    invalid = ValidationError({"endpoint": "Enter a valid http(s) URL, e.g. https://api.example.org/v1."})
    if len(endpoint) > 500 or any(ch.isspace() or ord(ch) < 32 for ch in endpoint):
        raise invalid
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid
    if "@" in parts.netloc:
        raise ValidationError({"endpoint": "The URL must not contain credentials (user:password@host)."})
    if parts.query or parts.fragment:
        raise ValidationError({"endpoint": "The URL must not contain a query string or fragment; keys go in the "
                                           "key field, never in the URL."})
    if tenant_controlled:
        refused = endpoint_allowed(parts.hostname)
        if refused:
            raise ValidationError({"endpoint": f"{refused}: endpoints set by a tenant may only reach public "
                                               "addresses. A sysadmin can approve an internal host in "
                                               "ENDPOINT_ALLOWED_HOSTS."})
    return endpoint.rstrip("/")


def credential_check_input(
    *, provider_type: str, api_key: str | None, endpoint: str = "", api_version: str = "",
    deployment_name: str = "", extra=None, key_optional: bool = False, tenant_controlled: bool = True,
) -> tuple[str, dict]:
    """Validate a credential for a (normalised) provider type; returns (api_key, cleaned values); the cleaned
    settings are values["extra"] (KEEP when kept).

    Raises ValidationError with one message per missing or invalid field, naming the type's requirements.
    Settings (`extra`) are the type's own (credentials.provider_rules); operator-only ones are refused in a
    tenant's credential whoever sets it: a tenant's calls never run as the server.
    """
    api_key = (api_key or "").strip()
    values = {
        "endpoint": (endpoint or "").strip(),
        "api_version": (api_version or "").strip(),
        "deployment_name": (deployment_name or "").strip(),
        "extra": extra,
    }
    reqs = requirements_for(provider_type)
    errors = {}
    if extra is not KEEP:
        try:
            values["extra"] = check_settings(provider_type, extra, tenant_controlled=True, where="extra")
        except SettingsError as exc:
            errors.update(exc.errors)
    settings = values["extra"] if isinstance(values["extra"], dict) else {}
    have = {**settings, **values, "api_key": api_key or ("kept" if key_optional else "")}
    for name in reqs.required:
        if not have.get(name):
            errors[name if name in have or name == "api_key" else f"extra.{name}"] = (
                f"This field is required and must not be empty ({reqs.describe()}).")
    if reqs.auth and not any(all(have.get(n) for n in group) for group in reqs.auth) and extra is not KEEP:
        errors.setdefault("api_key", f"Give the key, or one of the other ways to authenticate ({reqs.describe()}).")
    if not errors.get("endpoint"):
        try:
            values["endpoint"] = endpoint_validate(values["endpoint"], tenant_controlled=tenant_controlled)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    return api_key, values


@transaction.atomic
def credential_set(
    *,
    actor: Actor,
    tenant: Tenant,
    provider_type: str,
    api_key: str | None,
    endpoint: str = "",
    api_version: str = "",
    deployment_name: str = "",
    extra: dict | None = None,
    keep_existing_key: bool = False,
) -> TenantCredential:
    """Create or replace the tenant's credential for a provider type (the whole entry is replaced).

    `keep_existing_key` (admin edits): a blank api_key keeps the stored one instead of being an error.
    Raises ValidationError with one message per missing/invalid field, naming the provider's requirements.
    """
    provider_type = normalise_provider_type(provider_type)
    existing = TenantCredential.objects.select_for_update().filter(tenant=tenant, provider_type=provider_type).first()
    key_kept = keep_existing_key and not (api_key or "").strip() and existing is not None
    api_key, values = credential_check_input(
        provider_type=provider_type, api_key=api_key, endpoint=endpoint, api_version=api_version,
        deployment_name=deployment_name, extra=extra, key_optional=key_kept,
        tenant_controlled=not (actor.is_operator or endpoint_stays_approved(existing, endpoint)),
    )

    cred = existing or TenantCredential(tenant=tenant, provider_type=provider_type)
    before = _audit_view(existing) if existing else None
    if not key_kept:
        cred.api_key = Sealed(crypto.encrypt(api_key))  # may be "" where the settings authenticate (AWS keys)
        cred.api_key_last4 = last4_of(api_key) if api_key else ""
    # A sysadmin's endpoint is approved (may be internal); one set by anyone else is not. A tenant admin
    # replacing only the key keeps the approval of the endpoint a sysadmin set.
    if not endpoint_stays_approved(existing, values["endpoint"]):
        cred.endpoint_approved = actor.is_operator and bool(values["endpoint"])
    cred.endpoint = values["endpoint"]
    cred.api_version = values["api_version"]
    cred.deployment_name = values["deployment_name"]
    if values["extra"] is not KEEP:
        cred.extra = Sealed(crypto.encrypt(_json(values["extra"])), is_json=True) if values["extra"] else None
    cred.configured_at = timezone.now()
    cred.full_clean(exclude=["api_key", "extra"])
    cred.save()
    after = _audit_view(cred)
    if before is not None:
        after["api_key"] = "********" if key_kept else "***CHANGED***"
    audit_record(
        actor=actor,
        action="credential.set" if existing is None else "credential.replace",
        target=cred,
        tenant=tenant,
        changes={"before": before, "after": after},
    )
    catalog_bump(tenant)
    return cred


def endpoint_stays_approved(existing: TenantCredential | None, endpoint: str) -> bool:
    return (existing is not None and existing.endpoint_approved
            and existing.endpoint == (endpoint or "").strip().rstrip("/"))


def _json(value) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _audit_view(cred: TenantCredential) -> dict:
    return {
        "provider": cred.provider_type,
        "api_key": cred.masked_key,
        "endpoint": cred.endpoint,
        "api_version": cred.api_version,
        "deployment_name": cred.deployment_name,
        "extra": "********" if cred.extra is not None else None,
    }


@transaction.atomic
def credential_delete(*, actor: Actor, tenant: Tenant, provider_type: str) -> bool:
    """Delete the tenant's credential for a provider type. Idempotent; never decrypts anything."""
    provider_type = normalise_provider_type(provider_type)
    cred = TenantCredential.objects.filter(tenant=tenant, provider_type=provider_type).first()
    if cred is None:
        return False
    view, pk = _audit_view(cred), cred.pk
    cred.delete()
    cred.pk = pk  # so the audit event names the deleted row
    audit_record(actor=actor, action="credential.delete", target=cred, tenant=tenant, changes={"before": view, "after": None})
    catalog_bump(tenant)
    return True



def credential_list_viewed(*, actor: Actor, tenant: Tenant) -> None:
    """Record that someone listed a tenant's credentials (the sysadmin API's reads are audited too)."""
    audit_record(actor=actor, action="credential.list", target=tenant, tenant=tenant, changes={})
