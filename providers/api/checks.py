"""REST: start connectivity tests, validations and discoveries (queued on Celery), and read their status.

POST /api/v1/ai-providers/{id}/test, /discover and /models/{pk}/validate answer 202 with a task id;
GET /api/v1/tasks/{task_id} gives its state (queued, running, done) and outcome (masked).
Starting a check makes real (possibly billed) calls, so it needs aiProviders:UpdateAiProvider and change
access to the provider; reading a task needs aiProviders:GetAiProvider and sight of the provider.
"""
from datetime import datetime
from typing import Any, Optional

from ninja import Field, Router, Schema, Status

from tenants.auth import tenant_key_auth
from tenants.schemas import ErrorOut

from providers import selectors
from providers.api.providers import Scope, api_caller, model_for, provider_for
from providers.checks.jobs import check_expire_stale, check_start
from providers.models import ProviderCheck

ERRORS = {401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut}

router = Router(tags=["ai providers: checks"], auth=tenant_key_auth)
tasks_router = Router(tags=["ai providers: checks"], auth=tenant_key_auth)


class TaskOut(Schema):
    task_id: str
    kind: str = Field(..., description="test, validate, health or discover.")
    state: str = Field(..., description="queued, running or done.")
    ok: Optional[bool] = Field(None, description="The outcome once done.")
    status: str = Field(..., description="Health status the outcome implies.")
    message: str = Field(..., description="Outcome or progress, with secrets masked.")
    latency_ms: Optional[int] = None
    provider_id: str
    model_id: Optional[str] = None
    created_at: datetime
    finished_at: Optional[datetime] = None
    details: dict[str, Any] = Field(default_factory=dict, description="Discovery: added, vanished, reappeared.")
    status_url: str

    @staticmethod
    def resolve_provider_id(obj):
        return obj.provider.public_id

    @staticmethod
    def resolve_model_id(obj):
        return obj.model.model_id if obj.model_id else None

    @staticmethod
    def resolve_status_url(obj):
        return f"/api/v1/tasks/{obj.task_id}"


def _tenant_for(caller):
    return caller.api_key.tenant if caller.api_key is not None else None


@router.post("/{provider_id}/test", response={202: TaskOut, **ERRORS})
def test_provider(request, provider_id: str):
    """Queue a connectivity test (a 1-token call with the caller tenant's credential resolution)."""
    return Status(202, provider_test_start_for(api_caller(request, Scope.UPDATE), provider_id))


def provider_test_start_for(caller, provider_id: str) -> ProviderCheck:
    """Queue a connectivity test as REST and MCP do: change access to the provider, the caller tenant's credential."""
    provider = provider_for(caller, provider_id, action="change")
    return check_start(kind=ProviderCheck.Kind.TEST, provider=provider, tenant=_tenant_for(caller), actor=caller.actor)


@router.post("/{provider_id}/discover", response={202: TaskOut, **ERRORS})
def discover_models(request, provider_id: str):
    """Queue model discovery: new models are added as inactive, vanished ones marked, nothing deleted."""
    caller = api_caller(request, Scope.UPDATE)
    provider = provider_for(caller, provider_id, action="change")
    return Status(202, check_start(kind=ProviderCheck.Kind.DISCOVER, provider=provider, actor=caller.actor))


@router.post("/{provider_id}/models/{model_pk}/validate", response={202: TaskOut, **ERRORS})
def validate_model(request, provider_id: str, model_pk: int):
    """Queue a validation of one model (a tiny completion, or an embedding of "test")."""
    caller = api_caller(request, Scope.UPDATE)
    model = model_for(caller, provider_id, model_pk, action="change")
    return Status(202, check_start(kind=ProviderCheck.Kind.VALIDATE, provider=model.provider, model=model,
                                   tenant=_tenant_for(caller), actor=caller.actor))


@tasks_router.get("/{task_id}", response={200: TaskOut, **ERRORS})
def get_task(request, task_id: str):
    """State and outcome of a queued check. Unknown, or about a provider you cannot see: 404. A check still queued
    or running after CHECK_STALE_SECONDS is reported done and failed (its worker stopped)."""
    return check_for(api_caller(request, Scope.GET), task_id)


def check_for(caller, task_id: str) -> ProviderCheck:
    """A queued check the caller may see (else NotFound), stale ones reported failed (REST and MCP)."""
    check = selectors.check_get(principal=caller.principal, task_id=task_id)
    check_expire_stale(checks=[check])
    return check
