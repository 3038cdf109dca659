"""Secret hygiene, tested with a canary key set through the paths not covered elsewhere (environment bootstrap,
provider keys used by Celery checks) and searched for in LiteLLM's and Celery's DEBUG logs, task messages,
check records, error bodies and the whole database. (Sysadmin API, admin, wizard and REST paths: see
test_credentials_api, test_admin_*, test_ai_providers_api and test_gateway.)"""
import json
import logging

import httpx
import pytest
from celery.signals import before_task_publish
from django.core.management import call_command

from providers.checks.jobs import check_start
from providers.models import Provider, ProviderCheck
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import CANARY, dump_tables_text, openai_client


@pytest.fixture
def debug_everything():
    """LiteLLM, Celery, httpx and openai loggers at DEBUG for the test."""
    names = ["LiteLLM", "LiteLLM Router", "celery", "kombu", "httpx", "httpcore", "openai", "eneo", "django"]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)
    import litellm

    litellm._turn_on_debug()
    yield
    litellm.suppress_debug_info = True
    for n, level in old.items():
        logging.getLogger(n).setLevel(level)
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)


def test_env_bootstrap_key_is_never_stored_or_shown(gateway, upstream, tenant, monkeypatch, all_logs,
                                                    debug_everything, admin_client):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_API_BASE", upstream.url + "/v1")
    monkeypatch.setenv("OPENAI_MODELS", "gpt-4o-mini")
    call_command("ensure_env_providers")
    provider = Provider.objects.get(env_source="openai")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    client = openai_client(gateway, key)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices
    assert upstream.keys_seen() == [CANARY]
    upstream.set_fault("status", status=500, message=f"upstream blew up for key {CANARY}")
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502 and CANARY not in r.text
    pages = [admin_client.get(url).content.decode() for url in (
        "/admin/providers/provider/", f"/admin/providers/provider/{provider.pk}/change/",
        "/admin/providers/usagerecord/", "/admin/tenants/auditevent/")]
    gateway.flush_usage()
    assert not any(CANARY in p for p in pages)
    assert not any(CANARY in line for line in all_logs["masked"]), "a log line shows the canary"
    assert any("LiteLLM" in line or "litellm" in line for line in all_logs["masked"])  # LiteLLM did log at DEBUG
    assert CANARY not in dump_tables_text()


def test_celery_messages_and_check_records_hold_no_secret(db, upstream, all_logs, debug_everything,
                                                          django_capture_on_commit_callbacks):
    from .factories import make_model, make_provider

    published = []

    def capture(sender=None, body=None, headers=None, **kwargs):
        published.append(json.dumps({"body": body, "headers": headers}, default=str))

    before_task_publish.connect(capture)
    try:
        from eneo_site.celery import app

        p = make_provider(name="Canary provider", base_url=upstream.url + "/v1", api_key=CANARY,
                          config={"organization": "org-canary-test"})
        make_model(p, model_id="gpt-4o-mini")
        upstream.set_fault("status", status=500, message=f"internal error, key={CANARY}")
        eager = app.conf.task_always_eager
        app.conf.task_always_eager = False
        try:
            from .conftest import point_celery_at  # noqa: F401  (memory broker: capture without a server)

            previous = point_celery_at("memory://", eager=False, transport_options={})
            with django_capture_on_commit_callbacks(execute=True):
                check = check_start(kind=ProviderCheck.Kind.TEST, provider=p)
            point_celery_at(*previous)
        finally:
            app.conf.task_always_eager = eager
        from providers.checks.jobs import check_run

        outcome = check_run(check.pk)  # what the worker does with the message
    finally:
        before_task_publish.disconnect(capture)
    assert published and all(CANARY not in m for m in published)
    assert str(check.pk) in published[0]  # the message carries the id only
    check.refresh_from_db()
    assert not outcome.ok and CANARY not in check.message and CANARY not in json.dumps(check.details)
    p.refresh_from_db()
    assert CANARY not in p.health_error
    assert not any(CANARY in line for line in all_logs["masked"])
    assert CANARY not in dump_tables_text()
