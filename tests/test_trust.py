"""Trust: audit log API and completeness, endpoint allowlist, faults (Redis down, database reconnect),
admin login throttling, production security settings."""
import json
import subprocess
import sys

import pytest
from django.core.exceptions import ValidationError

from credentials.services import credential_set, endpoint_validate
from providers import services
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.models import AuditEvent

from .conftest import CANARY
from .factories import make_model, make_provider


# --- audit ----------------------------------------------------------------------------------------------

def test_audit_api_scopes_and_tenant_isolation(client, tenant, other_tenant, super_headers):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key=CANARY)
    credential_set(actor=SYSTEM, tenant=other_tenant, provider_type="openai", api_key="sk-other-tenant-0001")
    reader = api_key_create(actor=SYSTEM, tenant=tenant, name="auditor", scopes=["audit:ReadAuditEvents"]).plaintext
    r = client.get("/api/v1/audit-events", HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert r.status_code == 200
    events = r.json()["items"]
    assert events and all(e["tenant_id"] == str(tenant.pk) for e in events)
    assert {"credential.set", "api_key.create"} <= {e["action"] for e in events}
    assert CANARY not in r.content.decode()
    assert client.get(f"/api/v1/audit-events?tenant_id={other_tenant.pk}",
                      HTTP_AUTHORIZATION=f"Bearer {reader}").json()["items"] == events  # ignored for tenants
    everything = client.get("/api/v1/audit-events?action=credential.set", **super_headers).json()
    assert everything["count"] == 2
    one = client.get(f"/api/v1/audit-events?tenant_id={other_tenant.pk}", **super_headers).json()["items"]
    assert {e["tenant_id"] for e in one} == {str(other_tenant.pk)}
    no_scope = api_key_create(actor=SYSTEM, tenant=tenant, name="x", scopes=["gateway:Use"]).plaintext
    assert client.get("/api/v1/audit-events", HTTP_AUTHORIZATION=f"Bearer {no_scope}").status_code == 403
    assert client.get("/api/v1/audit-events").status_code == 401


def test_credential_api_usage_by_key_is_visible(client, tenant, super_headers):
    client.put(f"/api/v1/sysadmin/tenants/{tenant.pk}/credentials/openai", data=json.dumps({"api_key": CANARY}),
               content_type="application/json", REMOTE_ADDR="10.1.2.3", **super_headers)
    client.get(f"/api/v1/sysadmin/tenants/{tenant.pk}/credentials", REMOTE_ADDR="10.1.2.3", **super_headers)
    events = AuditEvent.objects.filter(tenant=tenant, action__startswith="credential.").order_by("id")
    assert [(e.action, e.actor, e.source, e.ip) for e in events] == [
        ("credential.set", "super-api-key", "api", "10.1.2.3"), ("credential.list", "super-api-key", "api", "10.1.2.3")]
    assert events[0].changes["after"]["api_key"] == "..." + CANARY[-4:]


def test_every_kind_of_change_is_audited(tenant, django_user_model):
    from django.contrib.auth.models import Group

    from tenants.services import membership_set

    user = django_user_model.objects.create_user("member1")
    membership_set(actor=SYSTEM, tenant=tenant, user=user, role="member")
    p = make_provider(tenant=tenant, name="Audited")
    m = make_model(p, model_id="m1")
    key = services.provider_key_add(actor=SYSTEM, provider=p, secret="sk-second-key-0002")
    services.provider_key_set_active(actor=SYSTEM, key=key, is_active=False)
    services.model_update(actor=SYSTEM, model=m, alias="fast")
    services.acl_grant(actor=SYSTEM, obj=p, grantee=user, role="viewer")
    group = Group.objects.create(name="g")
    services.acl_grant(actor=SYSTEM, obj=m, grantee=group, role="viewer")
    services.provider_update(actor=SYSTEM, provider=p, rpm=10)
    services.model_delete(actor=SYSTEM, model=m)
    services.provider_delete(actor=SYSTEM, provider=p)
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"tenant.create", "membership.set", "provider.create", "model.create", "provider_key.add",
            "provider_key.disable", "model.update", "acl.grant", "provider.update", "model.delete",
            "provider.delete"} <= actions


def test_schedule_edits_in_admin_are_audited(admin_client):
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(task="providers.tasks.health_checks_run")
    r = admin_client.post("/admin/django_celery_beat/periodictask/", {
        "action": "disable_tasks", "_selected_action": [task.pk]})
    assert r.status_code == 302
    event = AuditEvent.objects.get(action="schedule.update")
    assert event.changes == {"enabled": [True, False]} and event.actor == "operator"


def test_audit_log_is_read_only_in_admin(admin_client):
    event = AuditEvent.objects.create(actor="x", action="y", target_type="z")
    assert admin_client.get(f"/admin/tenants/auditevent/{event.pk}/change/").status_code == 200
    assert admin_client.post(f"/admin/tenants/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


# --- endpoint allowlist ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url,ok", [
    ("https://api.openai.com/v1", True),
    ("http://93.184.216.34/v1", True),
    ("http://localhost:8000/v1", False),
    ("http://127.0.0.1:8000/v1", False),
    ("http://169.254.169.254/latest", False),  # cloud metadata
    ("http://10.1.2.3:8000/v1", False),
    ("http://[::1]:8000/v1", False),
    ("http://vllm:8000/v1", False),
    ("http://gpu.internal/v1", False),
    ("http://vllm.approved.example/v1", True),
    ("http://10.20.30.40/v1", True),
    ("http://a.gpu.example.org/v1", True),
])
def test_endpoint_allowlist(settings, url, ok):
    settings.ENDPOINT_ALLOWED_HOSTS = ["vllm.approved.example", "10.20.0.0/16", "*.gpu.example.org"]
    if ok:
        assert endpoint_validate(url) == url
    else:
        with pytest.raises(ValidationError, match="ENDPOINT_ALLOWED_HOSTS"):
            endpoint_validate(url)


def test_operators_may_use_internal_endpoints_without_allowlist(settings):
    settings.ENDPOINT_ALLOWED_HOSTS = []
    assert endpoint_validate("http://vllm:8000/v1/", tenant_controlled=False) == "http://vllm:8000/v1"
    with pytest.raises(ValidationError, match="public"):
        endpoint_validate("http://vllm:8000/v1/")  # the same endpoint set by a tenant


@pytest.mark.parametrize("url", ["http://user:pw@host.example.org/v1", "https://x.example.org/v1?key=abc",
                                 "javascript:alert(1)", "http://exa mple.org", "http://host:99999/v1"])
def test_bad_endpoints_are_rejected(url):
    with pytest.raises(ValidationError):
        endpoint_validate(url)


def test_allowlist_applies_to_providers_via_api(client, tenant, settings):
    settings.ENDPOINT_ALLOWED_HOSTS = ["approved.example"]
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="k", scopes=["*"]).plaintext
    r = client.post("/api/v1/ai-providers", data=json.dumps({
        "name": "sneaky", "provider_type": "hosted_vllm", "base_url": "http://169.254.169.254/v1"}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert r.status_code == 422 and "ENDPOINT_ALLOWED_HOSTS" in r.content.decode()


# --- faults -----------------------------------------------------------------------------------------------

def test_gateway_limits_survive_redis_down(gateway, upstream, tenant, settings):
    """With RATE_LIMIT_REDIS_URL pointing at nothing, calls still work and limits count in-process."""
    from .conftest import _free_port, openai_client

    settings.RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"
    p = make_provider(tenant=tenant, name="Limited", base_url=upstream.url + "/v1", rpm=3, max_concurrency=2)
    make_model(p, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="k", scopes=["gateway:Use"]).plaintext
    client = openai_client(gateway, key)
    for _ in range(3):
        assert client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}]).choices
    import openai

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])


def test_redis_backed_limit_is_shared(gateway, upstream, tenant, settings, redis_url):
    import redis

    from .conftest import openai_client

    redis.Redis.from_url(redis_url).flushdb()
    settings.RATE_LIMIT_REDIS_URL = redis_url
    p = make_provider(tenant=tenant, name="Shared limit", base_url=upstream.url + "/v1", rpm=2)
    make_model(p, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="k", scopes=["gateway:Use"]).plaintext
    client = openai_client(gateway, key)
    for _ in range(2):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert int(redis.Redis.from_url(redis_url).get(next(iter(redis.Redis.from_url(redis_url).scan_iter("eneo:rpm:*"))))) == 2
    import openai

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])


def test_database_connection_loss_is_recovered(transactional_db, client, tenant, super_headers):
    """Connections killed on the server side (a database restart) are replaced on the next request."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("connection termination needs PostgreSQL (CI runs it)")
    url = f"/api/v1/sysadmin/tenants/{tenant.pk}/credentials"
    assert client.get(url, **super_headers).status_code == 200
    with connection.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    connection.close()  # ours too
    assert client.get(url, **super_headers).status_code == 200


# --- admin login throttling and production settings ------------------------------------------------------

def test_admin_login_is_rate_limited(client, operator):
    for _ in range(4):
        r = client.post("/admin/login/", {"username": "operator", "password": "wrong"}, REMOTE_ADDR="10.9.9.9")
        assert r.status_code == 200
    r = client.post("/admin/login/", {"username": "operator", "password": "wrong"}, REMOTE_ADDR="10.9.9.9")
    assert r.status_code == 429  # the 5th failure locks this user out from this address
    r = client.post("/admin/login/", {"username": "operator", "password": "pw-operator-123"}, REMOTE_ADDR="10.9.9.9")
    assert r.status_code == 429 and "Too many failed login attempts" in r.content.decode()
    other = client.post("/admin/login/", {"username": "operator", "password": "pw-operator-123"},
                        REMOTE_ADDR="10.9.9.10")
    assert other.status_code == 302  # another address is not locked out by someone else's guessing


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "x" * 20 + "production-secret-key-0123456789-abcdefghij",
           "ENCRYPTION_KEY": "3bUBeSzZxdnkt6DBxkR7C4_sBGiRTNKrQ_6U7d-CfnI=", "ALLOWED_HOSTS": "gw.example.org",
           "ENV_FILE": "/nonexistent", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    r = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                       env=env, capture_output=True, text=True, cwd=str(__import__("django.conf").conf.settings.BASE_DIR))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues" in r.stdout


def test_production_responses_carry_security_headers(client, settings):
    settings.SECURE_SSL_REDIRECT = False
    r = client.get("/admin/login/")
    assert r["X-Content-Type-Options"] == "nosniff" and r["X-Frame-Options"] == "DENY"
    assert r["Referrer-Policy"] == "same-origin"
