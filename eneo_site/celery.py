import os

from celery import Celery
from celery.signals import setup_logging, worker_init, worker_process_init, worker_process_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eneo_site.settings")

app = Celery("eneo_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_project_logging(loglevel=None, logfile=None, **kwargs):
    """Worker and beat log through settings.LOGGING, whose handlers mask secrets, instead of Celery's own set-up
    (which replaces the root logger's handlers and gives celery.task a handler of its own, both unmasked).
    Celery's loggers (celery.task, celery.worker, celery.app.trace, celery.beat) then reach the root handler.
    The level is LOG_LEVEL (the worker's --loglevel is not used); --logfile adds a masked file handler."""
    import logging
    from logging.handlers import WatchedFileHandler

    from django.conf import settings

    from credentials.masking import SecretMaskingFilter, configure_logging

    configure_logging(settings.LOGGING)
    if logfile:
        handler = WatchedFileHandler(logfile, encoding="utf-8")
        handler.setFormatter(logging.Formatter(settings.LOGGING["formatters"]["plain"]["format"]))
        handler.addFilter(SecretMaskingFilter())
        logging.getLogger().addHandler(handler)


@worker_init.connect
@worker_process_init.connect
def import_litellm(**kwargs):
    """Import LiteLLM (about 2 s) when the worker starts, not in its first task, where it delayed the task and
    was counted as the first connectivity test's latency. worker_init runs in the worker's main process (pool
    processes forked from it inherit the import); worker_process_init in each pool process, for pools that
    start them otherwise (a no-op when already imported). LiteLLM adds log handlers of its own: they mask too."""
    import providers.llm  # noqa: F401

    from credentials.masking import install_masking_everywhere

    install_masking_everywhere()


@worker_process_shutdown.connect
def forget_process_metrics(pid=None, **kwargs):
    """A pool process ends: its live gauges leave the metrics (providers.metrics)."""
    from providers.metrics import process_exited

    process_exited(pid)
