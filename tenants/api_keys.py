"""Tenant API keys: created once (plaintext shown once), checked by prefix lookup + constant-time HMAC compare."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .actors import Actor
from .models import Tenant, TenantApiKey
from .services import audit_record, catalog_bump

KEY_PREFIX = "eneo_"


def _digest(secret: str) -> str:
    pepper = (getattr(settings, "API_KEY_PEPPER", "") or settings.SECRET_KEY).encode()
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: TenantApiKey
    plaintext: str  # shown once to the creator, never stored


@transaction.atomic
def api_key_create(*, actor: Actor, tenant: Tenant, name: str, scopes: list[str], created_by=None,
                   expires_at=None) -> CreatedApiKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = TenantApiKey(tenant=tenant, name=name, prefix=prefix, digest=_digest(secret), scopes=list(scopes),
                       created_by=created_by, expires_at=expires_at)
    key.full_clean()
    key.save()
    audit_record(actor=actor, action="api_key.create", target=key, tenant=tenant,
                 changes={"name": name, "scopes": list(scopes), "prefix": prefix})
    catalog_bump(tenant)
    return CreatedApiKey(api_key=key, plaintext=f"{KEY_PREFIX}{prefix}_{secret}")


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: TenantApiKey) -> TenantApiKey:
    api_key.is_active = False
    api_key.save(update_fields=["is_active"])
    audit_record(actor=actor, action="api_key.revoke", target=api_key, tenant=api_key.tenant,
                 changes={"is_active": [True, False]})
    catalog_bump(api_key.tenant_id)
    return api_key


def api_key_match(presented: str | None, lookup) -> TenantApiKey | None:
    """The active, unexpired key matching `presented`; `lookup(prefix)` finds the stored key (database or cache)."""
    if not presented or not presented.startswith(KEY_PREFIX):
        return None
    prefix, _, secret = presented[len(KEY_PREFIX):].partition("_")
    if not secret:
        return None
    key = lookup(prefix)
    if key is None or not hmac.compare_digest(key.digest, _digest(secret)):
        return None
    if not key.is_active or not key.tenant.is_active:
        return None
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return None
    return key


def api_key_check(presented: str | None) -> TenantApiKey | None:
    """The active, unexpired key matching `presented` (with its tenant loaded), or None. Notes its use."""
    key = api_key_match(presented, lambda prefix: TenantApiKey.objects.select_related("tenant").filter(
        prefix=prefix).first())
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:  # at most one write a minute
        TenantApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key
