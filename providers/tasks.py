"""Celery tasks: thin wrappers that load by id and call a service (arguments are ids, results are ignored).

Worker deaths: `check_run` and `health_check_batch` are acknowledged only once they have run (acks_late), so the
message of a task whose worker is killed is not lost: when a prefork child dies the worker requeues it at once
(reject_on_worker_lost); when the whole worker dies Redis hands it to another worker after the broker's
visibility timeout (CELERY_VISIBILITY_TIMEOUT). Both are safe to run twice: a check already done is skipped (see
providers.checks.jobs.check_run); a health batch just probes again, and its message expires after
CHECK_STALE_SECONDS (the next scheduled run replaces it). Whatever is still pending after CHECK_STALE_SECONDS is
marked failed by `check_expire_stale` (beat, every minute).
"""
from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from providers.checks.jobs import check_expire_stale as check_expire_stale_service
from providers.checks.jobs import check_mark_retrying
from providers.checks.jobs import check_run as check_run_service
from providers.choices import ProviderStatus
from providers.checks.health import health_check_providers
from providers.models import Provider, ProviderCheck
from providers.provider_types import get_spec


@shared_task(bind=True, max_retries=3, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def check_run(self, check_id: int):
    """A connectivity test, model validation or discovery. Transient failures (429, 5xx, timeouts) are retried
    with exponential backoff; a rejected key is not."""
    outcome = check_run_service(check_id, attempt=self.request.retries,
                                retries_left=self.max_retries - self.request.retries)
    if outcome is not None and not outcome.ok and outcome.transient and self.request.retries < self.max_retries:
        countdown = int(settings.CHECK_RETRY_BACKOFF * 2 ** self.request.retries)
        check_mark_retrying(check_id, countdown)
        raise self.retry(countdown=countdown)


@shared_task(ignore_result=True)
def health_checks_run():
    """Scheduled (beat): fan out the active providers in batches; each batch probes concurrently."""
    ids = list(Provider.objects.filter(status=ProviderStatus.ACTIVE).order_by("pk").values_list("pk", flat=True))
    size = settings.HEALTH_CHECK_BATCH_SIZE
    for start in range(0, len(ids), size):
        health_check_batch.apply_async(args=[ids[start:start + size]], expires=settings.CHECK_STALE_SECONDS)
    cutoff = timezone.now() - timedelta(days=settings.HEALTH_HISTORY_DAYS)
    ProviderCheck.objects.filter(kind=ProviderCheck.Kind.HEALTH, created_at__lt=cutoff).delete()
    return len(ids)


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def health_check_batch(provider_ids: list[int]):
    health_check_providers(provider_ids)


@shared_task(ignore_result=True)
def discovery_run_all():
    """Scheduled (beat): discover models of every active provider whose server lists them."""
    from providers.checks.jobs import check_start

    for provider in Provider.objects.filter(status=ProviderStatus.ACTIVE):
        if get_spec(provider.provider_type).lists_models:
            check_start(kind=ProviderCheck.Kind.DISCOVER, provider=provider)


@shared_task(ignore_result=True)
def check_expire_stale():
    """Scheduled (beat, every minute): checks still queued or running after CHECK_STALE_SECONDS are marked failed."""
    return check_expire_stale_service()


@shared_task(ignore_result=True)
def usage_retention_run():
    """Scheduled (beat, hourly at :17): raw usage records older than USAGE_RETENTION_DAYS deleted in small batches
    (the hourly roll-ups stay)."""
    from providers.rollups import usage_retention_run as usage_retention_run_service

    return usage_retention_run_service()
