"""Model discovery: the ids a server lists at GET {base_url}/models (the wizard, the discovery task), and
`models_discover`, which brings a provider's model rows in line with what it lists.

OpenAI-compatible servers answer {"data": [{"id": ...}, ...]} with a Bearer key; Anthropic answers at /v1/models
with x-api-key and anthropic-version. A base URL ending in /v1 never gets a second /v1. Every failure becomes a
short, masked message (never an exception, never the key).
"""
from __future__ import annotations

from dataclasses import dataclass

import httpx
from django.conf import settings

from credentials.egress import EgressDenied, egress_scope, sync_client
from credentials.masking import mask_text, secret_scope
from credentials.provider_rules import setting_headers

MAX_IDS = 2000


@dataclass(frozen=True)
class Discovery:
    ids: tuple[str, ...] = ()
    error: str = ""
    transient: bool = False  # worth retrying (no answer, connection failed, 429, 5xx)


def models_url(provider_type: str, base_url: str) -> str:
    """{base}/models when the base already ends in /v1 (OpenAI convention), else {base}/v1/models."""
    base = base_url.rstrip("/")
    if not base.endswith("/v1") and (provider_type == "anthropic" or base.count("/") <= 2):
        base += "/v1"
    return base + "/models"


def list_headers(provider_type: str, api_key: str, settings: dict | None = None) -> dict:
    """The list request's headers: the key, and the type's settings that OpenAI-style servers read as headers."""
    if provider_type == "anthropic":
        return {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    return {**({"Authorization": f"Bearer {api_key}"} if api_key else {}), **setting_headers(settings)}


def _ids(payload) -> list[str]:
    items = payload.get("data", payload.get("models")) if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise ValueError("not a model list")
    ids = []
    for item in items[:MAX_IDS]:
        value = item.get("id") if isinstance(item, dict) else item
        if isinstance(value, str) and value.strip():
            ids.append(value.strip()[:200])
    return sorted(set(ids))


def discover_model_ids(*, provider_type: str, base_url: str, api_key: str = "", tenant_controlled: bool = True,
                       settings: dict | None = None) -> Discovery:
    """The ids a server lists. `tenant_controlled`: the base URL was set by a tenant (egress policy applies)."""
    url = models_url(provider_type, base_url)
    timeout = getattr(settings, "PROVIDER_DISCOVERY_TIMEOUT", 5.0)

    def failed(reason: str, transient: bool = False) -> Discovery:
        return Discovery(error=mask_text(f"Could not list the models at {url}: {reason.rstrip('.')}."),
                         transient=transient)

    with secret_scope(api_key), egress_scope(tenant_controlled=tenant_controlled):
        try:
            with sync_client(timeout=timeout) as client:
                response = client.get(url, headers=list_headers(provider_type, api_key, settings))
        except EgressDenied as exc:
            return failed(str(exc))
        except httpx.TimeoutException:
            return failed(f"no answer within {timeout:g} s", transient=True)
        except httpx.HTTPError:
            return failed("could not connect to the API", transient=True)
        if response.status_code in (401, 403):
            return failed(f"invalid API key (HTTP {response.status_code})")
        if 300 <= response.status_code < 400:
            return failed(f"HTTP {response.status_code} (a redirect, which is never followed)")
        if response.status_code != 200:
            return failed(f"HTTP {response.status_code}", transient=response.status_code == 429
                          or response.status_code >= 500)
        try:
            ids = _ids(response.json())
        except ValueError:
            return failed("the answer is not a model list")
    return Discovery(ids=tuple(ids)) if ids else failed("the server lists no models")


# --- Discovery into the catalog --------------------------------------------------------------------------

def models_discover(*, provider, actor) -> dict:
    """Compare the provider's models with what it offers now. New ones are added as inactive (an operator
    activates them), ones no longer offered get `vanished_at`, ones offered again lose it. Nothing is deleted.

    Servers that list their models (OpenAI-compatible, Anthropic) are asked; other types use LiteLLM's registry
    (their known models are added, nothing is marked vanished). Returns a summary for the check record.
    """
    from django.db import transaction
    from django.utils import timezone

    from tenants.services import audit_record

    from providers.models import AIModel
    from providers.provider_types import get_spec
    from providers.services import model_create, provider_credential

    spec = get_spec(provider.provider_type)
    if spec.lists_models:
        cred = provider_credential(provider=provider, tenant=provider.tenant)
        base = cred.api_base or provider.base_url or spec.default_base_url
        if not base:
            return {"ok": False, "error": "No base URL to list models from."}
        found = discover_model_ids(provider_type=provider.provider_type, base_url=base, api_key=cred.api_key or "",
                                   tenant_controlled=cred.tenant_controlled, settings=cred.settings)
        if found.error:
            return {"ok": False, "error": found.error, "transient": found.transient}
        offered, source, authoritative = set(found.ids), "server", True
    elif spec.models_entered_by_deployment:
        return {"ok": True, "source": "none", "added": [], "vanished": [], "reappeared": [],
                "note": "Azure deployments are not discoverable: enter each deployment as a model."}
    else:
        offered, source, authoritative = {m.model_id for m in spec.known_models()}, "litellm-registry", False
    now = timezone.now()
    with transaction.atomic():
        existing = {m.model_id: m for m in AIModel.objects.select_for_update().filter(provider=provider)}
        added = sorted(offered - set(existing))
        for model_id in added:
            model_create(actor=actor, provider=provider, model_id=model_id, status="inactive")
        vanished = sorted(m for m, row in existing.items() if authoritative and m not in offered and not row.vanished_at)
        reappeared = sorted(m for m, row in existing.items() if m in offered and row.vanished_at)
        AIModel.objects.filter(provider=provider, model_id__in=vanished).update(vanished_at=now)
        AIModel.objects.filter(provider=provider, model_id__in=reappeared).update(vanished_at=None)
        if vanished or reappeared:
            audit_record(actor=actor, action="model.discovery", target=provider, tenant=provider.tenant,
                         changes={"vanished": vanished, "reappeared": reappeared})
    return {"ok": True, "source": source, "added": added, "vanished": vanished, "reappeared": reappeared}
