from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from tenants.actors import Actor
from tenants.models import Tenant
from tenants.services import audit_record

from . import crypto
from .fields import Sealed
from .masking import last4_of
from .models import TenantCredential
from .provider_rules import normalise_provider_type, requirements_for


KEEP = object()  # admin edits: "keep the stored extra settings"


def endpoint_validate(endpoint: str) -> str:
    """A clean http(s) base URL, or "" for none. Single-label hosts (http://vllm:8000/v1) are fine;
    credentials in the URL are not (they would be stored and shown in clear)."""
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
    if settings.ENDPOINT_ALLOWED_HOSTS and _is_internal(parts.hostname) and not _allowed(parts.hostname):
        raise ValidationError({"endpoint": f"'{parts.hostname}' is an internal address that is not in "
                                           "ENDPOINT_ALLOWED_HOSTS. An operator must approve it there first."})
    return endpoint.rstrip("/")


_INTERNAL_SUFFIXES = (".local", ".localhost", ".internal", ".lan", ".home.arpa", ".intranet", ".corp")


def _addresses(host: str) -> list[ipaddress._BaseAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []  # unresolvable here: judged by its name only
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def _is_internal(host: str) -> bool:
    """Loopback, private, link-local (cloud metadata), reserved addresses, and names that point there."""
    name = host.lower().rstrip(".")
    if name == "localhost" or "." not in name and ":" not in name or name.endswith(_INTERNAL_SUFFIXES):
        return True
    return any(a.is_private or a.is_loopback or a.is_link_local or a.is_reserved or a.is_multicast
               or a.is_unspecified for a in _addresses(name))


def _allowed(host: str) -> bool:
    """ENDPOINT_ALLOWED_HOSTS entries: a host name, *.domain, or a network (10.0.0.0/8, 192.168.1.5)."""
    name = host.lower().rstrip(".").strip("[]")
    addresses = None
    for entry in settings.ENDPOINT_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry.startswith("*.") and (name.endswith(entry[1:]) or name == entry[2:]):
            return True
        if name == entry:
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        addresses = _addresses(name) if addresses is None else addresses
        if addresses and all(a in network for a in addresses):
            return True
    return False


def credential_check_input(
    *, provider_type: str, api_key: str | None, endpoint: str = "", api_version: str = "",
    deployment_name: str = "", extra=None, key_optional: bool = False,
) -> tuple[str, dict]:
    """Validate a credential for a (normalised) provider type; returns (api_key, cleaned values).

    Raises ValidationError with one message per missing or invalid field, naming the type's requirements.
    """
    api_key = (api_key or "").strip()
    values = {
        "endpoint": (endpoint or "").strip(),
        "api_version": (api_version or "").strip(),
        "deployment_name": (deployment_name or "").strip(),
    }
    reqs = requirements_for(provider_type)
    errors = {}
    if not api_key and not key_optional:
        errors["api_key"] = f"This field is required and must not be empty ({reqs.describe()})."
    for name in reqs.required:
        if name != "api_key" and not values.get(name):
            errors[name] = f"This field is required ({reqs.describe()})."
    if not errors.get("endpoint"):
        try:
            values["endpoint"] = endpoint_validate(values["endpoint"])
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if extra is not None and extra is not KEEP and not isinstance(extra, dict):
        errors["extra"] = "Must be a JSON object."
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
    )

    cred = existing or TenantCredential(tenant=tenant, provider_type=provider_type)
    before = _audit_view(existing) if existing else None
    if not key_kept:
        cred.api_key = Sealed(crypto.encrypt(api_key))
        cred.api_key_last4 = last4_of(api_key)
    cred.endpoint = values["endpoint"]
    cred.api_version = values["api_version"]
    cred.deployment_name = values["deployment_name"]
    if extra is not KEEP:
        cred.extra = Sealed(crypto.encrypt(_json(extra)), is_json=True) if extra else None
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
    return cred


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
    return True



def credential_list_viewed(*, actor: Actor, tenant: Tenant) -> None:
    """Record that someone listed a tenant's credentials (the sysadmin API's reads are audited too)."""
    audit_record(actor=actor, action="credential.list", target=tenant, tenant=tenant, changes={})
