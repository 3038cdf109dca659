"""The gateway's in-process catalog: API keys, tenants, routable models, provider keys and tenant credentials.

Rows are cached, never plaintext: secrets stay Fernet ciphertext (`Sealed`) until the call that needs them
decrypts them (about 12 µs). So a request costs no database query once the catalog is warm.

Freshness: every audited change adds an AuditEvent row, so `max(AuditEvent.id)` is the catalog's version.
At most every CATALOG_REFRESH_SECONDS a request checks it (one indexed query) and the catalog reloads when
it moved; it also reloads every CATALOG_MAX_AGE_SECONDS (health changes are not audited). A revoked key, a
disabled provider key or a replaced credential therefore stops being used within about a second, in every
worker process.

Which models a tenant may use is decided by providers.selectors.list_active_models (the one permission
filter); the catalog only memoises its answer per tenant.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Max

from credentials.models import TenantCredential
from credentials.provider_rules import ALIASES, provider_types
from tenants.api_keys import api_key_match
from tenants.models import AuditEvent, Tenant, TenantApiKey

from providers.choices import HealthStatus
from providers.models import AIModel, ProviderKey
from providers.provider_types import litellm_model_name
from providers.selectors import Principal, list_active_models

HEALTH_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.UNKNOWN: 1, HealthStatus.DEGRADED: 2, HealthStatus.DOWN: 3}


@dataclass
class TenantModels:
    models: list[AIModel]
    by_name: dict[str, list[AIModel]]


@dataclass
class Snapshot:
    version: int
    loaded_at: float
    keys: dict[str, TenantApiKey]
    tenants: dict[object, Tenant]
    credentials: dict[tuple, TenantCredential]
    provider_keys: dict[int, ProviderKey]
    known_names: dict[str, set]  # every model name -> owning tenant ids (None = instance level)
    _per_tenant: dict[object, TenantModels] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(self, token: str | None) -> TenantApiKey | None:
        return api_key_match(token, self.keys.get)

    def tenant_models(self, tenant: Tenant) -> TenantModels:
        """Usable models of a tenant (computed in a worker thread the first time; see `ensure_tenant`)."""
        return self._per_tenant[tenant.pk]

    def has_tenant(self, tenant: Tenant) -> bool:
        return tenant.pk in self._per_tenant

    def load_tenant(self, tenant: Tenant) -> TenantModels:
        close_old_connections()
        with self._lock:
            if tenant.pk in self._per_tenant:
                return self._per_tenant[tenant.pk]
            models = list(list_active_models(principal=Principal(tenant=tenant)).select_related("provider"))
            by_name: dict[str, list[AIModel]] = {}
            for m in models:
                for name in model_names(m):
                    by_name.setdefault(name, []).append(m)
            for candidates in by_name.values():
                candidates.sort(key=lambda m: (HEALTH_RANK.get(m.provider.health_status, 1), m.provider_id, m.pk))
            self._per_tenant[tenant.pk] = TenantModels(models=models, by_name=by_name)
            return self._per_tenant[tenant.pk]


def qualified_name(model: AIModel) -> str:
    """The LiteLLM-style name of a model: <prefix>/<model_id>, e.g. azure/gpt4o-prod."""
    return litellm_model_name(model.provider.provider_type, model.model_id)


def model_names(model: AIModel) -> set[str]:
    names = {model.model_id, qualified_name(model), f"{model.provider.provider_type}/{model.model_id}"}
    if model.alias:
        names.add(model.alias)
    return names


def split_prefix(name: str) -> tuple[str | None, str]:
    """('azure', 'gpt4o') for 'azure/gpt4o'; (None, name) when the first segment is not a provider type."""
    if "/" in name:
        head, rest = name.split("/", 1)
        head_l = ALIASES.get(head.lower(), head.lower())
        if head_l in provider_types():
            return head_l, rest
    return None, name


def _current_version() -> int:
    return AuditEvent.objects.aggregate(v=Max("id"))["v"] or 0


def _load(version: int) -> Snapshot:
    keys = {
        k.prefix: k
        for k in TenantApiKey.objects.select_related("tenant").filter(is_active=True, tenant__is_active=True)
    }
    tenants = {t.pk: t for t in Tenant.objects.filter(is_active=True)}
    credentials = {(c.tenant_id, c.provider_type): c for c in TenantCredential.objects.all()}
    provider_keys: dict[int, ProviderKey] = {}
    for key in ProviderKey.objects.filter(is_active=True).order_by("provider_id", "-created_at", "-id"):
        provider_keys.setdefault(key.provider_id, key)  # the newest active key of each provider
    known: dict[str, set] = {}
    for m in AIModel.objects.select_related("provider").only(
        "model_id", "alias", "provider__provider_type", "provider__tenant_id"
    ):
        for name in model_names(m):
            known.setdefault(name, set()).add(m.provider.tenant_id)
    return Snapshot(version=version, loaded_at=time.monotonic(), keys=keys, tenants=tenants,
                    credentials=credentials, provider_keys=provider_keys, known_names=known)


class Catalog:
    def __init__(self):
        self._snapshot: Snapshot | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def _refresh_sync(self, force: bool = False) -> Snapshot:
        close_old_connections()  # the gateway lane has no request signals: recycle broken/old connections here
        with self._lock:
            now = time.monotonic()
            snap = self._snapshot
            if not force and snap is not None and now - self._checked_at < settings.CATALOG_REFRESH_SECONDS:
                return snap
            version = _current_version()
            self._checked_at = now
            stale = snap is None or snap.version != version or now - snap.loaded_at > settings.CATALOG_MAX_AGE_SECONDS
            if force or stale:
                self._snapshot = _load(version)
            return self._snapshot

    async def get(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and time.monotonic() - self._checked_at < settings.CATALOG_REFRESH_SECONDS:
            return snap
        return await sync_to_async(self._refresh_sync, thread_sensitive=True)()

    async def tenant_models(self, snap: Snapshot, tenant: Tenant) -> TenantModels:
        if snap.has_tenant(tenant):
            return snap.tenant_models(tenant)
        return await sync_to_async(snap.load_tenant, thread_sensitive=True)(tenant)

    def invalidate(self):
        with self._lock:
            self._snapshot = None
            self._checked_at = 0.0


