"""Usage records: REST (GET /api/v1/usage, /summary) and the admin usage page."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from providers.models import UsageRecord
from providers.rollups import rollups_rebuild
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .factories import make_model, make_provider


@pytest.fixture
def records(tenant, other_tenant):
    p = make_provider(tenant=None, name="Shared")
    m = make_model(p, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="reader", scopes=["usage:ReadUsage"])
    now = timezone.now()
    rows = [
        UsageRecord(tenant=tenant, api_key=key.api_key, provider=p, model=m, requested_model="fast",
                    endpoint="chat.completions", tokens_in=10, tokens_out=5, cost=Decimal("0.001"), latency_ms=100,
                    status="ok", http_status=200, created_at=now - timedelta(hours=1)),
        UsageRecord(tenant=tenant, provider=p, model=m, requested_model="fast", endpoint="chat.completions",
                    status="error", http_status=502, error_type="upstream_error", latency_ms=30, created_at=now),
        UsageRecord(tenant=other_tenant, provider=p, model=m, requested_model="fast", endpoint="chat.completions",
                    tokens_in=99, status="ok", http_status=200, created_at=now),
    ]
    UsageRecord.objects.bulk_create(rows)
    rollups_rebuild()  # written straight to the table: the roll-ups the usage writer would have kept
    return {"key": key.plaintext, "prefix": key.api_key.prefix}


def test_tenant_key_reads_only_its_tenant(client, records):
    h = {"HTTP_AUTHORIZATION": f"Bearer {records['key']}"}
    r = client.get("/api/v1/usage", **h)
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 2 and {i["status"] for i in items} == {"ok", "error"}
    assert all(i["tokens_in"] != 99 for i in items)
    assert client.get("/api/v1/usage?status=error", **h).json()["count"] == 1
    assert client.get(f"/api/v1/usage?api_key_prefix={records['prefix']}", **h).json()["count"] == 1
    since = (timezone.now() - timedelta(minutes=5)).isoformat()
    assert client.get("/api/v1/usage", {"since": since}, **h).json()["count"] == 1
    summary = client.get("/api/v1/usage/summary", **h).json()
    assert summary["models"] == [{"requested_model": "fast", "calls": 2, "errors": 1, "tokens_in": 10,
                                  "tokens_out": 5, "cost": "0.00100000", "mean_latency_ms": 65.0}]


def test_tenant_key_cannot_pick_another_tenant(client, records, other_tenant):
    r = client.get(f"/api/v1/usage?tenant_id={other_tenant.pk}", HTTP_AUTHORIZATION=f"Bearer {records['key']}")
    assert r.status_code == 200 and r.json()["count"] == 2  # the filter is ignored: still its own tenant


def test_auth_and_scope(client, records, tenant):
    assert client.get("/api/v1/usage").status_code == 401
    other = api_key_create(actor=SYSTEM, tenant=tenant, name="x", scopes=["gateway:Use"]).plaintext
    assert client.get("/api/v1/usage", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 403
    assert client.get("/api/v1/usage?status=bogus", HTTP_AUTHORIZATION=f"Bearer {records['key']}").status_code == 422


def test_sysadmin_sees_all_or_one_tenant(client, records, other_tenant, super_headers):
    assert client.get("/api/v1/usage", **super_headers).json()["count"] == 3
    assert client.get(f"/api/v1/usage?tenant_id={other_tenant.pk}", **super_headers).json()["count"] == 1


def test_admin_usage_page_with_totals(admin_client, records, django_assert_max_num_queries):
    # list, count, totals with p50/p95, chart series, three breakdowns, filters: a fixed number whatever the rows
    # (tests/test_admin_dashboard.py checks it does not grow with them)
    with django_assert_max_num_queries(20):
        page = admin_client.get("/admin/providers/usagerecord/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Every call through the /v1 gateway" in html and ">3<" in html  # 3 calls in the totals
    assert admin_client.get("/admin/providers/usagerecord/?status__exact=error").context["totals"]["calls"] == 1
