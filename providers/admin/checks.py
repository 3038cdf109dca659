"""Where the admin starts connectivity tests and model validations: queued on Celery (providers.checks.jobs).

The page shows the outcome when it is already there (eager mode, or inline when the broker is down), else a
"queued" notice; the change page lists the check and refreshes itself until it is done.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages

from tenants.actors import Actor

from providers.checks.jobs import check_start
from providers.models import AIModel, Provider, ProviderCheck


@dataclass(frozen=True)
class Started:
    ok: bool | None  # None = still queued or running
    message: str
    latency_ms: int | None = None

    @property
    def level(self):
        return messages.INFO if self.ok is None else messages.SUCCESS if self.ok else messages.ERROR


def _started(check: ProviderCheck) -> Started:
    check.refresh_from_db()
    if check.state == ProviderCheck.State.DONE:
        return Started(check.ok, check.message, check.latency_ms)
    return Started(None, "queued; the result appears under “Last checks” on the provider page in a moment")


def run_provider_test(provider: Provider, request=None) -> Started:
    actor = Actor.from_request(request, source="admin") if request is not None else None
    return _started(check_start(kind=ProviderCheck.Kind.TEST, provider=provider, actor=actor))


def run_model_validate(model: AIModel, request=None) -> Started:
    actor = Actor.from_request(request, source="admin") if request is not None else None
    return _started(check_start(kind=ProviderCheck.Kind.VALIDATE, provider=model.provider, model=model, actor=actor))


def run_discovery(provider: Provider, request=None) -> Started:
    actor = Actor.from_request(request, source="admin") if request is not None else None
    return _started(check_start(kind=ProviderCheck.Kind.DISCOVER, provider=provider, actor=actor))
