"""Connectivity tests, model validations and discoveries as background jobs.

`check_start` records a queued ProviderCheck and queues `check_run` on Celery once the transaction commits
(the task gets only the check's id). If the broker cannot be reached, the check runs inline instead, so the
admin and the API keep working without Redis. Progress and outcome are read from the ProviderCheck row
(GET /api/v1/tasks/{task_id}); nothing secret is ever a task argument or a task result.
"""
from __future__ import annotations

import logging
import uuid

from django.db import transaction
from django.utils import timezone

from tenants.actors import Actor

from providers.checks import connectivity
from providers.models import AIModel, Provider, ProviderCheck

log = logging.getLogger("eneo.checks")


def check_start(*, kind: str, provider: Provider, model: AIModel | None = None, tenant=None,
                actor: Actor | None = None) -> ProviderCheck:
    check = ProviderCheck.objects.create(provider=provider, model=model, tenant=tenant, kind=kind,
                                         state=ProviderCheck.State.QUEUED, task_id=uuid.uuid4().hex,
                                         details={"requested_by": actor.name if actor else "system"})
    transaction.on_commit(lambda: _dispatch(check))
    return check


def _dispatch(check: ProviderCheck):
    from providers.tasks import check_run as check_run_task

    try:
        check_run_task.apply_async(args=[check.pk], task_id=check.task_id, retry=False)
    except Exception as exc:  # noqa: BLE001 - broker down: do the work here rather than fail the page
        log.warning("task queue unavailable (%s): running the %s check inline", type(exc).__name__, check.kind)
        ProviderCheck.objects.filter(pk=check.pk).update(
            details={**check.details, "ran_inline": "the task queue was unavailable"})
        check_run(check.pk)
    check.refresh_from_db()


def check_run(check_id: int, *, attempt: int = 0, retries_left: int = 0) -> connectivity.CheckOutcome | None:
    """Run a queued check. Returns the outcome (None when the check no longer exists). With `retries_left`, a
    transient failure leaves the check queued for the retry instead of done."""
    check = ProviderCheck.objects.select_related("provider", "model", "tenant").filter(pk=check_id).first()
    if check is None:
        return None
    ProviderCheck.objects.filter(pk=check.pk).update(state=ProviderCheck.State.RUNNING,
                                                     details={**check.details, "attempt": attempt + 1})
    check.details = {**check.details, "attempt": attempt + 1}
    check.retry_pending = retries_left > 0
    if check.kind == ProviderCheck.Kind.TEST:
        return connectivity.provider_test(provider=check.provider, tenant=check.tenant, check=check)
    if check.kind == ProviderCheck.Kind.VALIDATE:
        return connectivity.model_validate(model=check.model, tenant=check.tenant, check=check)
    if check.kind == ProviderCheck.Kind.DISCOVER:
        return _discover(check)
    raise ValueError(f"unknown check kind {check.kind}")


def _discover(check: ProviderCheck) -> connectivity.CheckOutcome:
    from credentials.resolution import CredentialError

    from providers.checks.discovery import models_discover

    try:
        summary = models_discover(provider=check.provider, actor=Actor(name="discovery", source="task"))
    except CredentialError as exc:
        summary = {"ok": False, "error": str(exc)}
    if summary["ok"]:
        message = (f"{len(summary['added'])} new (inactive), {len(summary['vanished'])} vanished, "
                   f"{len(summary['reappeared'])} back" + (f" - {summary['note']}" if summary.get("note") else ""))
    else:
        message = summary["error"]
    outcome = connectivity.CheckOutcome(summary["ok"], "healthy" if summary["ok"] else "degraded", message,
                                        transient=bool(summary.get("transient")))
    check.state, check.ok, check.status = connectivity.final_state(check, outcome), outcome.ok, outcome.status
    check.message = message[:500]
    check.details = {**check.details, **{k: v for k, v in summary.items() if k != "ok"}}
    check.finished_at = timezone.now()
    check.save()
    return outcome


def check_mark_retrying(check_id: int, countdown: int):
    ProviderCheck.objects.filter(pk=check_id).update(state=ProviderCheck.State.QUEUED,
                                                     message=f"Temporary failure; retrying in {countdown} s")
