"""The gateway catalog's freshness (providers/gateway/catalog.py, DESIGN.md "Gateway state"): the explicit version
bumped on commit by every write that changes routing or authentication, reloads of only what changed, in the
background, never blocking requests, and never refusing a key that exists.

In-process, against the `gateway` live server (uvicorn in a thread of the test process); `gateway.gw.catalog` is
that server's catalog.
"""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from django.conf import settings
from django.db import transaction

from credentials.services import credential_list_viewed, credential_set
from providers import services
from providers.models import Provider
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create, api_key_revoke
from tenants.models import AuditEvent, CatalogChange, CatalogVersion, Tenant
from tenants.services import catalog_bump, tenant_delete, tenant_update

from .factories import make_model, make_provider

REFRESH = 1.0  # CATALOG_REFRESH_SECONDS in the timing tests (the `gateway` fixture sets 0: see at once)


def version() -> int:
    return CatalogVersion.objects.values_list("version", flat=True).first() or 0


def changes_since(v: int) -> list[tuple]:
    return list(CatalogChange.objects.filter(version__gt=v).values_list("tenant_id", "kind"))


def status_of(gateway, key: str, path: str = "/v1/models") -> int:
    return httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def snapshot(gateway):
    return gateway.gw.catalog._state.snapshot


def new_key(tenant) -> str:
    return api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext


@pytest.fixture
def timed(gateway, settings):
    """The live gateway with CATALOG_REFRESH_SECONDS = REFRESH, as in production (checks in the background)."""
    settings.CATALOG_REFRESH_SECONDS = REFRESH
    return gateway


def assert_refused_within(gateway, key: str, committed_at: float, *, limit: float):
    """Requests sent from `committed_at` on: some may pass early, none sent `limit` s after it, and every one
    after that is refused. Returns when a request sent past the limit was refused."""
    late_passes = []
    while True:
        sent = time.monotonic()
        code = status_of(gateway, key)
        if code == 200 and sent - committed_at >= limit:
            late_passes.append(round(sent - committed_at, 3))
        if code == 401 and sent - committed_at >= limit:
            break
        assert code in (200, 401), code
        assert sent - committed_at < limit + 5, "still not refused"
        time.sleep(0.05)
    assert late_passes == [], f"accepted {late_passes} s after the change (limit {limit} s)"
    for _ in range(5):
        assert status_of(gateway, key) == 401


# --- the version: bumped on commit by writes, never by reads ------------------------------------------------

def test_writes_bump_on_commit_reads_never(transactional_db, tenant):
    v = version()
    credential_list_viewed(actor=SYSTEM, tenant=tenant)  # an audited read
    assert version() == v and changes_since(v) == []

    with transaction.atomic():
        key = api_key_create(actor=SYSTEM, tenant=tenant, name="a", scopes=["gateway:Use"]).api_key
        credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-0001")
        assert version() == v  # nothing before the commit
    assert version() == v + 1  # several writes of one transaction: one version
    assert changes_since(v) == [(tenant.pk, "data")]

    with pytest.raises(RuntimeError), transaction.atomic():
        api_key_revoke(actor=SYSTEM, api_key=key)
        raise RuntimeError("rolled back")
    assert version() == v + 1  # a rolled-back write bumps nothing

    provider = make_provider(tenant=None, instance_wide=True)
    assert changes_since(v + 1) == [(None, "data")]  # instance level
    model = make_model(provider, model_id="gpt-4o-mini")
    services.model_set_tenant_enabled(actor=SYSTEM, model=model, tenant=tenant, enabled=True)
    assert changes_since(v + 2)[-1] == (tenant.pk, "data")  # an enablement: that tenant only


def test_every_routing_write_bumps(transactional_db, tenant, django_user_model):
    """Each service that changes what the gateway may use bumps the version, with the right scope."""
    own = make_provider(tenant=tenant, name="Own")
    shared = make_provider(tenant=None, name="Shared")
    model = make_model(shared, model_id="m1")
    key = own.keys.get()
    created = api_key_create(actor=SYSTEM, tenant=tenant, name="k", scopes=["*"]).api_key
    steps = [
        (lambda: tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=10), tenant.pk),
        (lambda: api_key_revoke(actor=SYSTEM, api_key=created), tenant.pk),
        (lambda: credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-x-1234"), tenant.pk),
        (lambda: services.provider_update(actor=SYSTEM, provider=own, rpm=5), tenant.pk),
        (lambda: services.provider_key_set_active(actor=SYSTEM, key=key, is_active=False), tenant.pk),
        (lambda: services.provider_key_add(actor=SYSTEM, provider=own, secret="sk-new-5678"), tenant.pk),
        (lambda: services.provider_key_delete(actor=SYSTEM, key=key), tenant.pk),
        (lambda: services.model_update(actor=SYSTEM, model=model, alias="fast"), None),
        (lambda: services.model_delete(actor=SYSTEM, model=model), None),
        (lambda: services.provider_update(actor=SYSTEM, provider=shared, status="inactive"), None),
        (lambda: services.provider_delete(actor=SYSTEM, provider=own, force=True), tenant.pk),
    ]
    for step, scope in steps:
        v = version()
        step()
        assert changes_since(v) == [(scope, "data")], step
    from credentials.services import credential_delete

    v = version()
    credential_delete(actor=SYSTEM, tenant=tenant, provider_type="openai")
    assert changes_since(v) == [(tenant.pk, "data")]
    v = version()
    services.model_update(actor=SYSTEM, model=make_model(shared, model_id="m2"), display_label="")  # no change
    assert changes_since(v) == [(None, "data")]  # (the model_create only)


def test_tenant_delete_service_is_audited_and_bumps(transactional_db, tenant):
    v, pk = version(), tenant.pk
    tenant_delete(actor=SYSTEM, tenant=tenant)
    assert not Tenant.objects.filter(pk=pk).exists()
    event = AuditEvent.objects.get(action="tenant.delete")
    assert event.target_id == str(pk) and event.changes["before"]["slug"] == "acme"
    assert changes_since(v) == [(pk, "data")]


def test_health_change_bumps_health_only(transactional_db):
    from providers.checks.health import health_check_providers

    provider = make_provider(tenant=None, base_url="http://127.0.0.1:9/v1")  # nothing listens there
    make_model(provider, model_id="gpt-4o-mini")
    v = version()
    health_check_providers([provider.pk])
    assert Provider.objects.get(pk=provider.pk).health_status != "unknown"
    assert changes_since(v) == [(None, "health")]


# --- revocations reach the gateway within CATALOG_REFRESH_SECONDS ---------------------------------------------

def test_revoked_key_refused_within_refresh(timed, tenant):
    key = new_key(tenant)
    assert status_of(timed, key) == 200
    api_key = tenant.api_keys.get()
    api_key_revoke(actor=SYSTEM, api_key=api_key)
    assert_refused_within(timed, key, time.monotonic(), limit=REFRESH)


def test_deleted_tenant_refused_within_refresh(timed, tenant):
    key = new_key(tenant)
    assert status_of(timed, key) == 200
    tenant_delete(actor=SYSTEM, tenant=tenant)
    assert_refused_within(timed, key, time.monotonic(), limit=REFRESH)


def test_tenant_deleted_in_admin_refused_within_refresh(timed, tenant, other_tenant, admin_client):
    key, other = new_key(tenant), new_key(other_tenant)
    assert status_of(timed, key) == 200 and status_of(timed, other) == 200
    response = admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="tenant.delete", target_id=str(tenant.pk), source="admin").exists()
    assert_refused_within(timed, key, time.monotonic(), limit=REFRESH)
    # the bulk action ("Delete selected tenants") goes through the service too
    response = admin_client.post("/admin/tenants/tenant/", {"action": "delete_selected", "post": "yes",
                                                            "_selected_action": [str(other_tenant.pk)]})
    assert response.status_code == 302 and not Tenant.objects.filter(pk=other_tenant.pk).exists()
    assert AuditEvent.objects.filter(action="tenant.delete", target_id=str(other_tenant.pk)).exists()
    assert_refused_within(timed, other, time.monotonic(), limit=REFRESH)


def test_deactivated_tenant_and_disabled_provider(gateway, upstream, tenant):
    """With CATALOG_REFRESH_SECONDS = 0 a change applies to the very next request."""
    provider = make_provider(tenant=None, instance_wide=True, base_url=upstream.url + "/v1")
    make_model(provider, model_id="gpt-4o-mini", alias="fast")
    key = new_key(tenant)
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    post = lambda: httpx.post(gateway.url + "/v1/chat/completions", json=body,  # noqa: E731
                              headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert post().status_code == 200
    services.provider_update(actor=SYSTEM, provider=provider, status="inactive")
    assert post().status_code == 403  # model_not_allowed: its provider is inactive
    services.provider_update(actor=SYSTEM, provider=provider, status="active")
    assert post().status_code == 200
    tenant_update(actor=SYSTEM, tenant=tenant, is_active=False)
    assert post().status_code == 401


# --- only what changed is reloaded ----------------------------------------------------------------------------

def test_audited_read_does_not_reload(gateway, tenant):
    key = new_key(tenant)
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-0001")
    assert status_of(gateway, key) == 200
    before, stats = snapshot(gateway), dict(gateway.gw.catalog.stats)
    events = AuditEvent.objects.count()
    for _ in range(3):
        r = httpx.get(f"{gateway.url}/api/v1/sysadmin/tenants/{tenant.pk}/credentials",
                      headers={"X-API-Key": settings.SUPER_API_KEY}, timeout=10)
        assert r.status_code == 200
        assert status_of(gateway, key) == 200
    assert AuditEvent.objects.count() == events + 3  # the reads were audited ...
    assert snapshot(gateway) is before  # ... and nothing was reloaded
    after = gateway.gw.catalog.stats
    assert after["polls"] > stats["polls"]
    assert {k: after[k] for k in ("full", "tenants", "instance")} == \
        {k: stats[k] for k in ("full", "tenants", "instance")}


def test_one_tenant_reload_leaves_other_tenants_untouched(gateway, upstream, tenant, other_tenant):
    shared = make_provider(tenant=None, instance_wide=True, base_url=upstream.url + "/v1")
    make_model(shared, model_id="gpt-4o-mini", alias="fast")
    keys = {t.pk: new_key(t) for t in (tenant, other_tenant)}
    for t in (tenant, other_tenant):
        credential_set(actor=SYSTEM, tenant=t, provider_type="anthropic", api_key=f"sk-ant-{t.slug}-0001")
        own = make_provider(tenant=t, name="Own", base_url=upstream.url + "/v1")
        make_model(own, model_id=f"own-{t.slug}")
        assert status_of(gateway, keys[t.pk]) == 200  # /v1/models: loads the model list too
    old, stats = snapshot(gateway), dict(gateway.gw.catalog.stats)
    b = other_tenant.pk
    b_prefix = next(p for p, k in old.keys.items() if k.tenant_id == b)

    credential_set(actor=SYSTEM, tenant=tenant, provider_type="anthropic", api_key="sk-ant-replaced-0002")
    make_model(Provider.objects.get(tenant=tenant), model_id="own-acme-2")
    assert status_of(gateway, keys[tenant.pk]) == 200
    new = snapshot(gateway)
    assert new is not old
    stats_after = gateway.gw.catalog.stats
    assert stats_after["full"] == stats["full"] and stats_after["tenants"] > stats["tenants"]
    # the other tenant's entries: the very same objects
    assert new.tenants[b] is old.tenants[b]
    assert new.keys[b_prefix] is old.keys[b_prefix]
    assert new.credentials[(b, "anthropic")] is old.credentials[(b, "anthropic")]
    assert new.per_tenant[b] is old.per_tenant[b]
    own_b = Provider.objects.get(tenant=other_tenant)
    assert new.provider_keys[own_b.pk] is old.provider_keys[own_b.pk]
    assert new.provider_keys[shared.pk] is old.provider_keys[shared.pk]
    # the changed tenant's: read again, and its model list (in use) rebuilt before the swap
    a = tenant.pk
    assert new.credentials[(a, "anthropic")] is not old.credentials[(a, "anthropic")]
    assert new.credentials[(a, "anthropic")].api_key_last4 == "0002"
    assert "own-acme-2" in new.per_tenant[a].by_name and "own-acme-2" not in old.per_tenant[a].by_name
    assert new.known_names["own-acme-2"] == {a} and new.known_names["own-other"] == {b}
    # an instance-level change rebuilds every tenant's model list, but not their keys or credentials
    make_model(shared, model_id="gpt-4o", alias="smart")
    assert status_of(gateway, keys[b]) == 200
    inst = snapshot(gateway)
    assert gateway.gw.catalog.stats["instance"] == stats["instance"] + 1
    assert inst.keys[b_prefix] is new.keys[b_prefix] and inst.credentials[(b, "anthropic")] is new.credentials[
        (b, "anthropic")]
    assert "smart" in inst.per_tenant[b].by_name


def test_health_change_reorders_without_reloading(gateway, upstream, tenant):
    first = make_provider(tenant=None, instance_wide=True, name="First", base_url=upstream.url + "/v1")
    second = make_provider(tenant=None, instance_wide=True, name="Second", base_url=upstream.url + "/v1")
    make_model(first, model_id="gpt-4o-mini", alias="fast")
    make_model(second, model_id="gpt-4o-mini", alias="fast")
    key = new_key(tenant)
    assert status_of(gateway, key) == 200
    old = snapshot(gateway)
    assert [m.provider_id for m in old.per_tenant[tenant.pk].by_name["fast"]] == [first.pk, second.pk]
    Provider.objects.filter(pk=first.pk).update(health_status="down")
    catalog_bump(None, kind=CatalogChange.Kind.HEALTH)
    stats = dict(gateway.gw.catalog.stats)
    assert status_of(gateway, key) == 200
    deadline = time.monotonic() + 5
    while gateway.gw.catalog.stats["health"] == stats["health"] and time.monotonic() < deadline:
        time.sleep(0.02)
    new = snapshot(gateway)
    assert [m.provider_id for m in new.per_tenant[tenant.pk].by_name["fast"]] == [second.pk, first.pk]
    assert new.keys is old.keys and new.credentials is old.credentials  # nothing else read again
    assert gateway.gw.catalog.stats["full"] == stats["full"]


# --- a new key is never refused; a reload never blocks requests -----------------------------------------------

async def _concurrent_statuses(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=n)) as client:
        responses = await asyncio.gather(*(client.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
                                           for _ in range(n)))
    return [r.status_code for r in responses]


@pytest.mark.parametrize("refresh", [0.0, REFRESH, 30.0])
def test_just_created_key_never_refused(gateway, tenant, other_tenant, settings, refresh):
    """64 concurrent calls right after the key's creation (the catalog warm, without it): all answered 200.
    Even with CATALOG_REFRESH_SECONDS = 30 an unknown key makes the catalog look once more before refusing."""
    settings.CATALOG_REFRESH_SECONDS = refresh
    assert status_of(gateway, new_key(other_tenant)) == 200  # warm
    for _ in range(3):
        key = new_key(tenant)
        statuses = asyncio.run(_concurrent_statuses(gateway.url, key, 64))
        assert statuses == [200] * 64, sorted(set(statuses))
    # and the same with threads, each its own connection
    key = new_key(tenant)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(status_of(gateway, key))) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 64
    assert status_of(gateway, "eneo_000000000000_not-a-key") == 401  # an unknown key is still refused


def test_slow_reload_does_not_block_requests(timed, tenant, other_tenant, monkeypatch):
    """A reload of one tenant that takes 3 s (the loader patched to sleep): the other tenant's requests are
    answered from the current snapshot meanwhile; the changed tenant's too, until CATALOG_REFRESH_SECONDS after the
    change, then they wait for the new snapshot, which refuses the revoked key."""
    from providers.gateway import catalog as catalog_module

    slow_key, fast_key = new_key(tenant), new_key(other_tenant)
    assert status_of(timed, slow_key) == 200 and status_of(timed, fast_key) == 200
    read_rows = catalog_module.read_rows
    slow = tenant.pk

    def sleepy(owners):
        if owners is not None and slow in owners:
            time.sleep(3)
        return read_rows(owners)

    monkeypatch.setattr(catalog_module, "read_rows", sleepy)
    api_key_revoke(actor=SYSTEM, api_key=tenant.api_keys.get())
    changed = time.monotonic()
    timings = []
    while time.monotonic() - changed < 3.5:
        started = time.monotonic()
        assert status_of(timed, fast_key) == 200
        timings.append(time.monotonic() - started)
        time.sleep(0.05)
    assert max(timings) < 0.5, f"a request of another tenant waited {max(timings):.2f} s"
    assert len(timings) > 20
    assert status_of(timed, slow_key) == 401


def test_changed_tenant_served_from_old_snapshot_until_deadline(timed, tenant, monkeypatch):
    """While its reload runs, the changed tenant's requests are answered at once from the old snapshot as long as
    the change is younger than CATALOG_REFRESH_SECONDS; a request arriving later waits for the reload."""
    from providers.gateway import catalog as catalog_module

    key = new_key(tenant)
    assert status_of(timed, key) == 200
    read_rows = catalog_module.read_rows
    loading = threading.Event()

    def sleepy(owners):
        if owners is not None and tenant.pk in owners:
            loading.set()
            time.sleep(2)
        return read_rows(owners)

    monkeypatch.setattr(catalog_module, "read_rows", sleepy)
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=100)  # a change that keeps the key valid
    assert loading.wait(REFRESH)
    confirmed, _ = timed.gw.catalog._state.pending[tenant.pk]  # the version check before the change
    deadline = confirmed + REFRESH  # the change is at most this old when a request must see it
    early = []
    while time.monotonic() < deadline - 0.15:
        started = time.monotonic()
        assert status_of(timed, key) == 200
        early.append(time.monotonic() - started)
        time.sleep(0.02)
    assert early and max(early) < 0.1, early  # answered at once, from the old snapshot
    assert snapshot(timed).tenants[tenant.pk].monthly_budget is None
    time.sleep(max(0.0, deadline + 0.05 - time.monotonic()))
    started = time.monotonic()
    assert status_of(timed, key) == 200
    assert time.monotonic() - started > 0.3  # waited for the reload ...
    assert snapshot(timed).tenants[tenant.pk].monthly_budget == 100  # ... and was served by the new snapshot


def test_lost_bump_healed_by_full_reload(gateway, tenant, settings):
    """A write that bypassed the services (no bump) shows after CATALOG_MAX_AGE_SECONDS at the latest."""
    key = new_key(tenant)
    assert status_of(gateway, key) == 200
    Tenant.objects.filter(pk=tenant.pk).update(is_active=False)  # no service, no bump
    assert status_of(gateway, key) == 200  # not seen ...
    settings.CATALOG_MAX_AGE_SECONDS = 0.2
    deadline = time.monotonic() + 5
    while status_of(gateway, key) == 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status_of(gateway, key) == 401  # ... until the full reload
