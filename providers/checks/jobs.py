"""Connectivity tests, model validations and discoveries as background jobs.

`check_start` records a queued ProviderCheck and queues `check_run` on Celery once the transaction commits
(the task gets only the check's id). If the broker cannot be reached, the check runs inline instead, so the
admin and the API keep working without Redis. Progress and outcome are read from the ProviderCheck row
(GET /api/v1/tasks/{task_id}); nothing secret is ever a task argument or a task result.

A check never stays pending: `check_run` is acknowledged late and redelivered when its worker dies (providers.tasks),
and running it again is safe (a check already done is skipped, one left running by a dead attempt runs again). A
check still queued or running CHECK_STALE_SECONDS after it was created is marked failed by `check_expire_stale`,
which a periodic task and every reader (REST, admin) call.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tenants.actors import Actor

from providers.checks import connectivity
from providers.choices import HealthStatus
from providers.metrics import check_done
from providers.models import AIModel, Provider, ProviderCheck

log = logging.getLogger("eneo.checks")

PENDING = (ProviderCheck.State.QUEUED, ProviderCheck.State.RUNNING)
# A check whose worker died this many times while running it is given up (it may be what kills the worker): with
# reject_on_worker_lost, Celery would otherwise redeliver it for as long as it keeps killing workers.
MAX_WORKER_LOSSES = 3


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
    if check.state == ProviderCheck.State.DONE:  # a redelivered message of a finished (or expired) check
        log.info("%s check %s is already done; not running it again", check.kind, check.pk)
        return None
    if check_expire_stale(checks=[check]):
        return None
    details = {**check.details, "attempt": attempt + 1}
    if check.state == ProviderCheck.State.RUNNING:  # redelivered: the worker of the previous attempt died
        details["worker_lost"] = losses = int(check.details.get("worker_lost", 0)) + 1
        log.warning("the worker running %s check %s stopped (%d time(s)); running it again", check.kind, check.pk,
                    losses)
        if losses >= MAX_WORKER_LOSSES:
            ProviderCheck.objects.filter(pk=check.pk, state__in=PENDING).update(
                state=ProviderCheck.State.DONE, ok=False, status=HealthStatus.UNKNOWN, details=details,
                finished_at=timezone.now(),
                message=f"The check was interrupted {losses} times (its worker stopped each time); not run again.")
            return None
    if not ProviderCheck.objects.filter(pk=check.pk, state__in=PENDING).update(state=ProviderCheck.State.RUNNING,
                                                                               details=details):
        return None  # finished or expired meanwhile
    check.state, check.details = ProviderCheck.State.RUNNING, details
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
    if check.state == ProviderCheck.State.DONE:
        check_done(check.kind, outcome.ok)
    return outcome


def check_mark_retrying(check_id: int, countdown: int):
    ProviderCheck.objects.filter(pk=check_id).update(state=ProviderCheck.State.QUEUED,
                                                     message=f"Temporary failure; retrying in {countdown} s")


def stale_message(seconds: int) -> str:
    return f"The check did not finish within {seconds} s (its worker stopped?). Run it again."


def check_expire_stale(*, checks: Iterable[ProviderCheck] | None = None) -> int:
    """Mark checks still queued or running CHECK_STALE_SECONDS after they were created as done and failed (status
    unknown: nothing was learnt about the provider, whose health fields stay as they are), so nobody waits for a
    check whose worker died. Without `checks`: every such row (the periodic task). With `checks` (rows a reader is
    about to show): only those, refreshed in place. A worker that still finishes one later records its real
    outcome over this. Returns how many rows were marked."""
    seconds = settings.CHECK_STALE_SECONDS
    now = timezone.now()
    cutoff = now - timedelta(seconds=seconds)
    rows = ProviderCheck.objects.filter(state__in=PENDING, created_at__lt=cutoff)
    stale = None
    if checks is not None:
        stale = [c for c in checks if c.state in PENDING and c.created_at < cutoff]
        if not stale:
            return 0
        rows = rows.filter(pk__in=[c.pk for c in stale])
    marked = rows.update(state=ProviderCheck.State.DONE, ok=False, status=HealthStatus.UNKNOWN,
                         message=stale_message(seconds), finished_at=now)
    for check in stale or ():
        check.refresh_from_db(fields=["state", "ok", "status", "message", "finished_at", "details"])
    if marked:
        log.warning("%d check(s) did not finish within %d s (worker stopped?): marked failed", marked, seconds)
    return marked
