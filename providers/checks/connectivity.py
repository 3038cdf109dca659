"""Connectivity test, model validation and (later) health probes: minimal real calls through LiteLLM.

Outcomes users know from Eneo: "Invalid API key", "Could not connect to the API", "None of the test models
could be found", otherwise "Connection test failed: ..." (masked). Every outcome is stored as a
ProviderCheck row and on the provider's health fields; messages never contain a key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from credentials.egress import egress_denied, egress_scope
from credentials.masking import secret_scope
from credentials.resolution import CredentialError, ResolvedCredential
from tenants.models import CatalogChange
from tenants.services import catalog_bump

from providers.choices import HealthStatus, ModelStatus, ModelType
from providers.metrics import check_done
from providers.models import AIModel, Provider, ProviderCheck
from providers.provider_types import get_spec, litellm_model_name


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    status: str
    message: str
    latency_ms: int | None = None
    model_id: str | None = None
    transient: bool = False  # worth retrying (429, 5xx, timeouts); never for a rejected key


TRANSIENT_PREFIXES = ("Could not connect", "Rate limited", "Connection test failed")


def _connection_failed(exc: BaseException | None) -> bool:
    """LiteLLM reports a refused connection as an InternalServerError: look at what caused it."""
    import httpx

    for _ in range(10):
        if exc is None:
            return False
        if isinstance(exc, (httpx.ConnectError, httpx.TimeoutException, ConnectionError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def classify_error(exc: Exception) -> tuple[str, str]:
    """(health status, user-facing message) for an exception from a provider call. Masked."""
    from providers.llm import litellm

    if isinstance(exc, CredentialError):
        return HealthStatus.DOWN, str(exc)
    denied = egress_denied(exc)
    if denied is not None:
        return HealthStatus.DOWN, f"Endpoint not allowed: {denied}"
    if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
        return HealthStatus.DOWN, "Invalid API key"
    if isinstance(exc, (litellm.Timeout, litellm.APIConnectionError)) or _connection_failed(exc):
        return HealthStatus.DOWN, "Could not connect to the API"
    if isinstance(exc, litellm.NotFoundError):
        return HealthStatus.DEGRADED, "None of the test models could be found"
    if isinstance(exc, litellm.RateLimitError):
        return HealthStatus.DEGRADED, "Rate limited by the provider (429); the key works"
    from providers.llm import upstream_text

    return HealthStatus.DOWN, f"Connection test failed: {upstream_text(exc)}"


class Stopwatch:
    """Milliseconds since `start()`, which a probe calls right before the upstream call: a check's latency is the
    provider's, not LiteLLM's import, the credential lookup or the building of the request."""

    def __init__(self):
        self.started: float | None = None

    def start(self):
        self.started = time.monotonic()

    def ms(self) -> int | None:
        return None if self.started is None else int((time.monotonic() - self.started) * 1000)


def _probe(provider: Provider, model: AIModel | None, model_id: str, model_type: str, cred: ResolvedCredential,
           watch: Stopwatch):
    """One tiny real call with the resolved credential, to the endpoint it is bound to, under its egress rule."""
    from providers.llm import call_kwargs, litellm
    from providers.services import model_settings

    name = litellm_model_name(provider.provider_type, model_id)
    kwargs = {**(model_settings(model) if model is not None else {}),
              **call_kwargs(provider.provider_type, cred, name), "timeout": settings.PROVIDER_TEST_TIMEOUT,
              "num_retries": 0, "max_retries": 0}
    with secret_scope(cred.api_key), egress_scope(tenant_controlled=cred.tenant_controlled):
        if model_type == ModelType.EMBEDDING:
            watch.start()
            litellm.embedding(input=["test"], **kwargs)
        else:
            max_tokens = settings.PROBE_MAX_TOKENS_REASONING if (model and model.supports_reasoning) else 1
            watch.start()
            litellm.completion(messages=[{"role": "user", "content": "hi"}], drop_params=True,
                               **{**kwargs, "max_tokens": max_tokens})


def _test_candidates(provider: Provider) -> list[tuple[AIModel | None, str, str]]:
    models = list(provider.models.filter(status=ModelStatus.ACTIVE).order_by("model_type", "id")[:3])
    if models:
        return [(m, m.model_id, m.model_type) for m in models]
    spec = get_spec(provider.provider_type)
    return [(None, m, ModelType.INFERENCE) for m in spec.test_models]


def final_state(check: ProviderCheck, outcome: CheckOutcome) -> str:
    """DONE, or still QUEUED when a transient failure will be retried (readers never see a retried check as
    done in between)."""
    retrying = outcome.transient and not outcome.ok and getattr(check, "retry_pending", False)
    return ProviderCheck.State.QUEUED if retrying else ProviderCheck.State.DONE


def _record(provider: Provider, kind: str, outcome: CheckOutcome, *, model=None, tenant=None, check=None,
            update_health=True) -> ProviderCheck:
    now = timezone.now()
    check = check or ProviderCheck(provider=provider, model=model, tenant=tenant, kind=kind)
    check.state, check.ok, check.status = final_state(check, outcome), outcome.ok, outcome.status
    check.latency_ms, check.message, check.finished_at = outcome.latency_ms, outcome.message[:500], now
    check.details = {**(check.details or {}), "model_id": outcome.model_id}
    check.save()
    if update_health and tenant is None:
        Provider.objects.filter(pk=provider.pk).update(
            health_status=outcome.status, health_checked_at=now, health_latency_ms=outcome.latency_ms,
            health_error="" if outcome.ok else outcome.message[:500],
        )
        if outcome.status != provider.health_status:  # the gateway prefers healthy candidates: tell its catalog
            catalog_bump(provider.tenant_id, kind=CatalogChange.Kind.HEALTH)
    if check.state == ProviderCheck.State.DONE:
        check_done(kind, outcome.ok)
    return check


def provider_test(*, provider: Provider, tenant=None, check: ProviderCheck | None = None) -> CheckOutcome:
    """A 1-token completion to a model of the provider (or a cheap known one) with the resolved key."""
    from providers.services import provider_credential

    try:
        cred = provider_credential(provider=provider, tenant=tenant)
    except CredentialError as exc:
        outcome = CheckOutcome(False, HealthStatus.DOWN, str(exc))
        _record(provider, ProviderCheck.Kind.TEST, outcome, tenant=tenant, check=check)
        return outcome
    candidates = _test_candidates(provider)
    if not candidates:
        outcome = CheckOutcome(False, HealthStatus.UNKNOWN,
                               "No model to test with: add a model (for Azure, a deployment) first.")
        _record(provider, ProviderCheck.Kind.TEST, outcome, tenant=tenant, check=check, update_health=False)
        return outcome
    outcome = None
    for model, model_id, model_type in candidates:
        watch = Stopwatch()
        try:
            _probe(provider, model, model_id, model_type, cred, watch)
            outcome = CheckOutcome(True, HealthStatus.HEALTHY, f"Connection OK ({model_id})", watch.ms(), model_id)
            break
        except Exception as exc:  # noqa: BLE001 - every failure is reported, masked
            status, message = classify_error(exc)
            outcome = CheckOutcome(False, status, message, watch.ms(), model_id,
                                   transient=message.startswith(TRANSIENT_PREFIXES))
            if message != "None of the test models could be found":
                break
    _record(provider, ProviderCheck.Kind.TEST, outcome, tenant=tenant, check=check)
    return outcome


def model_validate(*, model: AIModel, tenant=None, check: ProviderCheck | None = None) -> CheckOutcome:
    """One tiny completion (or an embedding of "test") with exactly this model."""
    from providers.services import provider_credential

    provider = model.provider
    watch = Stopwatch()
    try:
        cred = provider_credential(provider=provider, tenant=tenant)
        _probe(provider, model, model.model_id, model.model_type, cred, watch)
        outcome = CheckOutcome(True, HealthStatus.HEALTHY, f"Model {model.model_id} answered", watch.ms(),
                               model.model_id)
    except Exception as exc:  # noqa: BLE001
        status, message = classify_error(exc)
        if message == "None of the test models could be found":
            message = f"Model '{model.model_id}' was not found at the provider"
        outcome = CheckOutcome(False, status, message, watch.ms(), model.model_id,
                               transient=message.startswith(TRANSIENT_PREFIXES))
    _record(provider, ProviderCheck.Kind.VALIDATE, outcome, model=model, tenant=tenant, check=check,
            update_health=False)
    return outcome
