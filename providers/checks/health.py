"""Health checks for many providers at once: concurrent, each bounded by HEALTH_CHECK_TIMEOUT, so one slow or
dead provider never delays the others.

Probes are cheap: servers that list their models get GET {base}/models (no tokens, no cost); the others get
the smallest real call (an embedding of "test" for embedding-only providers, else a completion with
HEALTH_PROBE_MAX_TOKENS, more for reasoning models, which fail on a 1-token budget).

Status: a passing probe -> healthy; a failing one -> degraded, and down when it was already failing (two in a
row). The gateway prefers healthy models of an alias.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from credentials.egress import EgressDenied, async_client, egress_scope
from credentials.masking import mask_text, secret_scope
from credentials.resolution import CredentialError, ResolvedCredential
from tenants.models import CatalogChange
from tenants.services import catalog_bump

from providers.choices import HealthStatus, ModelStatus, ModelType, ProviderStatus
from providers.checks.connectivity import Stopwatch, classify_error
from providers.checks.discovery import list_headers, models_url
from providers.metrics import check_done
from providers.models import AIModel, Provider, ProviderCheck
from providers.provider_types import get_spec, litellm_model_name


@dataclass
class Probe:
    provider: Provider
    cred: ResolvedCredential | None
    error: str = ""  # set when there is nothing to probe with
    model: AIModel | None = None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: str
    message: str
    latency_ms: int | None


def _plan(provider: Provider) -> Probe:
    from providers.services import provider_credential

    try:
        cred = provider_credential(provider=provider, tenant=provider.tenant)
    except CredentialError as exc:
        return Probe(provider, None, error=str(exc))
    spec = get_spec(provider.provider_type)
    if spec.lists_models and (cred.api_base or provider.base_url or spec.default_base_url):
        return Probe(provider, cred)
    models = list(provider.models.filter(status=ModelStatus.ACTIVE).order_by("model_type", "id")[:1])
    if not models:
        return Probe(provider, cred, error="No active model to probe with.")
    return Probe(provider, cred, model=models[0])


async def _probe(probe: Probe, client: httpx.AsyncClient) -> ProbeResult:
    provider, cred = probe.provider, probe.cred
    watch = Stopwatch()  # around the upstream call only
    with secret_scope(cred.api_key), egress_scope(tenant_controlled=cred.tenant_controlled):
        try:
            if probe.model is None:
                base = cred.api_base or provider.base_url or get_spec(provider.provider_type).default_base_url
                headers = list_headers(provider.provider_type, cred.api_key or "", cred.settings)
                watch.start()
                response = await client.get(models_url(provider.provider_type, base), headers=headers)
                latency = watch.ms()
                if response.status_code in (401, 403):
                    return ProbeResult(False, HealthStatus.DOWN, "Invalid API key", latency)
                if response.status_code == 429:
                    return ProbeResult(False, HealthStatus.DEGRADED, "Rate limited by the provider (429)", latency)
                if response.status_code != 200:
                    redirect = " (a redirect, never followed)" if 300 <= response.status_code < 400 else ""
                    return ProbeResult(False, HealthStatus.DOWN,
                                       f"Model list answered HTTP {response.status_code}{redirect}", latency)
                return ProbeResult(True, HealthStatus.HEALTHY, "OK (model list)", latency)
            return await _probe_call(probe, watch)
        except EgressDenied as exc:
            return ProbeResult(False, HealthStatus.DOWN, f"Endpoint not allowed: {exc}", None)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            return ProbeResult(False, HealthStatus.DOWN, "Could not connect to the API (timeout)", None)
        except httpx.HTTPError:
            return ProbeResult(False, HealthStatus.DOWN, "Could not connect to the API", None)
        except Exception as exc:  # noqa: BLE001 - every failure is a result, masked
            status, message = classify_error(exc)
            return ProbeResult(False, status, mask_text(message), watch.ms())


async def _probe_call(probe: Probe, watch: Stopwatch) -> ProbeResult:
    from providers.llm import call_kwargs, litellm
    from providers.services import model_settings

    model, cred = probe.model, probe.cred
    kwargs = {**model_settings(model),
              **call_kwargs(probe.provider.provider_type, cred,
                            litellm_model_name(probe.provider.provider_type, model.model_id)), "timeout": settings.HEALTH_CHECK_TIMEOUT,
              "num_retries": 0, "max_retries": 0}
    if model.model_type == ModelType.EMBEDDING:
        watch.start()
        await litellm.aembedding(input=["test"], **kwargs)
    else:
        max_tokens = settings.PROBE_MAX_TOKENS_REASONING if model.supports_reasoning else settings.HEALTH_PROBE_MAX_TOKENS
        watch.start()
        await litellm.acompletion(messages=[{"role": "user", "content": "hi"}], drop_params=True,
                                  **{**kwargs, "max_tokens": max_tokens})
    return ProbeResult(True, HealthStatus.HEALTHY, f"OK ({model.model_id})", watch.ms())


async def _run(probes: list[Probe]) -> list[ProbeResult]:
    limit = asyncio.Semaphore(settings.HEALTH_CHECK_CONCURRENCY)
    timeout = settings.HEALTH_CHECK_TIMEOUT
    async with async_client(timeout=timeout,
                            limits=httpx.Limits(max_connections=settings.HEALTH_CHECK_CONCURRENCY)) as client:

        async def one(probe: Probe) -> ProbeResult:
            if probe.error:
                return ProbeResult(False, HealthStatus.UNKNOWN, probe.error, None)
            async with limit:
                try:
                    return await asyncio.wait_for(_probe(probe, client), timeout + 1)
                except asyncio.TimeoutError:
                    return ProbeResult(False, HealthStatus.DOWN, "Could not connect to the API (timeout)", None)

        return await asyncio.gather(*(one(p) for p in probes))


def _next_status(previous: str, result: ProbeResult) -> str:
    if result.ok or result.status == HealthStatus.UNKNOWN:
        return result.status
    if result.status == HealthStatus.DOWN and previous in (HealthStatus.DEGRADED, HealthStatus.DOWN):
        return HealthStatus.DOWN
    return HealthStatus.DEGRADED


def health_check_providers(provider_ids: list[int]) -> dict:
    """Probe these providers concurrently and store the outcome. Returns counts per status."""
    providers = list(Provider.objects.filter(pk__in=provider_ids, status=ProviderStatus.ACTIVE)
                     .select_related("tenant"))
    probes = [_plan(p) for p in providers]
    results = asyncio.run(_run(probes))
    now = timezone.now()
    counts: dict[str, int] = {}
    checks = []
    with transaction.atomic():
        for provider, result in zip(providers, results):
            status = _next_status(provider.health_status, result)
            counts[status] = counts.get(status, 0) + 1
            if status != provider.health_status:  # the gateway prefers healthy candidates: tell its catalog
                catalog_bump(provider.tenant_id, kind=CatalogChange.Kind.HEALTH)
            provider.health_status, provider.health_checked_at = status, now
            provider.health_latency_ms = result.latency_ms
            provider.health_error = "" if result.ok else result.message[:500]
            checks.append(ProviderCheck(provider=provider, kind=ProviderCheck.Kind.HEALTH,
                                        state=ProviderCheck.State.DONE, ok=result.ok, status=status,
                                        latency_ms=result.latency_ms, message=result.message[:500],
                                        finished_at=now))
        Provider.objects.bulk_update(providers, ["health_status", "health_checked_at", "health_latency_ms",
                                                 "health_error"], batch_size=500)
        ProviderCheck.objects.bulk_create(checks, batch_size=500)
    passed = sum(1 for result in results if result.ok)
    check_done(ProviderCheck.Kind.HEALTH, True, passed)
    check_done(ProviderCheck.Kind.HEALTH, False, len(results) - passed)
    return counts
