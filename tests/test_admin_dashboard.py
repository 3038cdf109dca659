"""The operator's dashboard (admin index), the index order, usage charts / breakdown / CSV export, the provider
page's health history and the model list's health and "enabled for" columns."""
import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers import dashboard as dash
from providers import services
from providers.models import AIModel, Provider, ProviderCheck, UsageRecord
from providers.selectors import Principal
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .factories import make_model, make_provider, make_user, usage_record_create

USAGE = "/admin/providers/usagerecord/"
MODELS = "/admin/providers/aimodel/"


def record(tenant, model, *, ago=timedelta(hours=1), status="ok", cost="0.25", latency=100, tokens=(10, 5),
           requested=None, api_key=None, request_id=""):
    return usage_record_create(
        tenant=tenant, provider=model.provider, model=model, requested_model=requested or model.model_id,
        endpoint="chat.completions", tokens_in=tokens[0], tokens_out=tokens[1], cost=Decimal(cost),
        latency_ms=latency, status=status, http_status=200 if status == "ok" else 502, api_key=api_key,
        request_id=request_id, created_at=timezone.now() - ago)


def check(provider, status, *, ago, kind=ProviderCheck.Kind.HEALTH, latency=50, message="", model=None):
    row = ProviderCheck.objects.create(provider=provider, model=model, kind=kind, state=ProviderCheck.State.DONE,
                                       ok=status == "healthy", status=status, latency_ms=latency, message=message)
    ProviderCheck.objects.filter(pk=row.pk).update(created_at=timezone.now() - ago)
    return row


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def tenant_admin(django_user_model, tenant, username="acme-admin"):
    user = make_user(django_user_model, username, tenant=tenant, role="admin", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_usagerecord", "view_provider", "view_aimodel", "change_aimodel"]))
    return user


def section(page: str, element_id: str) -> str:
    """The HTML from the element with `element_id` up to the next dashboard module."""
    start = page.index(f'id="{element_id}"')
    end = page.find('<div class="module"', start + 1)
    return page[start:end if end > 0 else len(page)]


@pytest.fixture
def world(tenant, other_tenant):
    """Acme: 3 calls an hour ago (latency 100/200/300 ms, one upstream error, 0.25 each); Other Region: one call
    3 days ago (1000 ms, 1.5). A healthy instance provider, and a failing one owned by Other Region."""
    shared = make_provider(tenant=None, instance_wide=True, name="Shared OpenAI")
    chat = make_model(shared, model_id="chat-large")
    other_provider = make_provider(tenant=other_tenant, name="Other Secret Provider")
    other_model = make_model(other_provider, model_id="other-model")
    Provider.objects.filter(pk=shared.pk).update(health_status="healthy")
    Provider.objects.filter(pk=other_provider.pk).update(
        health_status="down", health_error="Could not connect to the API at 10.9.8.7", health_checked_at=timezone.now())
    check(other_provider, "healthy", ago=timedelta(hours=5))
    since = check(other_provider, "down", ago=timedelta(hours=2), message="Could not connect")
    check(other_provider, "down", ago=timedelta(minutes=10), message="Could not connect")
    for latency, status in ((100, "ok"), (200, "error"), (300, "ok")):
        record(tenant, chat, latency=latency, status=status)
    record(other_tenant, other_model, ago=timedelta(days=3), latency=1000, cost="1.5")
    return {"shared": shared, "chat": chat, "other_provider": other_provider, "other_model": other_model,
            "down_since": ProviderCheck.objects.get(pk=since.pk).created_at}


# --- the dashboard ---------------------------------------------------------------------------------------------

def test_dashboard_for_a_superuser(admin_client, world, tenant, other_tenant):
    page = admin_client.get("/admin/").content.decode()
    health = section(page, "dashboard-health")
    assert '<span class="eneo-count" style="color:#c62828">1</span> Down' in health
    assert '<span class="eneo-count" style="color:#2e7d32">1</span> Healthy' in health
    failing = section(page, "failing-providers")
    assert f'href="/admin/providers/provider/{world["other_provider"].pk}/change/"' in failing
    assert "Could not connect to the API at 10.9.8.7" in failing
    since = timezone.now() - world["down_since"]
    assert f"{int(since.total_seconds() // 3600)}\xa0hour" in failing  # failing since the first failed check

    day = section(page, "dashboard-24h")
    # totals: 3 calls, 1 error, 30/15 tokens, cost, p50 150 ms, p95 285 ms (estimated from the roll-ups' latency
    # histogram, providers/rollups.py; percentile_cont over the raw records: 200 and 290)
    assert "<td>3</td><td>1</td><td>30</td><td>15</td>" in day
    assert "<td>0.750000</td>" in day and "<td>150 ms</td>" in day and "<td>285 ms</td>" in day
    assert "<title>Calls and errors per hour</title>" in day and day.count("<svg") == 3
    hour = timezone.localtime(timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%d %H:00")
    assert f"<tr><td>{hour}</td><td>3</td><td>1</td></tr>" in day  # the chart's table
    assert f"<tr><td>{hour}</td><td>0.750000</td></tr>" in day

    month = section(page, "dashboard-30d")
    assert "<td>4</td><td>1</td><td>40</td><td>20</td>" in month
    assert "<td>2.250000</td>" in month and "<td>200 ms</td>" in month and "<td>888 ms</td>" in month  # est.: 250, 895
    assert "<title>Latency p50 and p95 per day</title>" in month

    top = section(page, "dashboard-top")
    assert f'href="/admin/providers/usagerecord/?tenant__id__exact={tenant.pk}"' in top
    assert f'href="/admin/providers/usagerecord/?model__id__exact={world["chat"].pk}"' in top
    by_cost = top[top.index("Top tenants by cost"):]
    assert by_cost.index("Other Region") < by_cost.index("Acme Municipality")
    assert "Providers and models" in page and "/admin/providers/provider/add/" in page


def test_dashboard_for_a_tenant_admin_shows_only_their_tenant(django_user_model, world, tenant, other_tenant):
    page = logged_in(tenant_admin(django_user_model, tenant)).get("/admin/").content.decode()
    assert "Other Region" not in page and "Other Secret Provider" not in page and "10.9.8.7" not in page
    assert "No provider is down or degraded." in page
    month = section(page, "dashboard-30d")
    assert "<td>3</td><td>1</td><td>30</td><td>15</td>" in month and "<td>0.750000</td>" in month
    assert "Acme Municipality" in section(page, "dashboard-top")


def test_staff_without_usage_or_provider_permission_gets_no_dashboard(django_user_model, world, tenant):
    user = make_user(django_user_model, "plain-staff", tenant=tenant, role="admin", is_staff=True)
    page = logged_in(user).get("/admin/").content.decode()
    assert 'id="dashboard"' not in page and "Acme Municipality" not in page


def test_dashboard_runs_a_bounded_constant_number_of_queries(admin_client, world, tenant, other_tenant):
    def count():
        admin_client.get("/admin/")
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get("/admin/").status_code == 200
        return len(ctx.captured_queries)

    few = count()
    for n in range(30):
        model = make_model(world["shared"], model_id=f"bulk-{n}")
        failing = make_provider(tenant=other_tenant, name=f"Failing {n}")
        Provider.objects.filter(pk=failing.pk).update(health_status="degraded", health_error="slow")
        check(failing, "degraded", ago=timedelta(minutes=n))
        for hours in range(0, 24 * 20, 37):
            record(tenant if n % 2 else other_tenant, model, ago=timedelta(hours=hours, minutes=n), latency=n * 10)
    many = count()
    assert few == many, (few, many)
    assert many <= 20, many  # session, user, 2 health, 2-4 per window, 4 top lists, the app list


# --- the index order -------------------------------------------------------------------------------------------

def test_index_is_ordered_for_operators(admin_client):
    page = admin_client.get("/admin/").content.decode()
    order = [page.index(f">{name}</a>") for name in
             ("Providers and models", "Tenants", "Usage and audit", "System settings")]
    assert order == sorted(order)
    system = page[page.index(">System settings</a>"):]
    for name in ("Users", "Groups", "Access attempts", "Periodic tasks", "Crontabs"):
        assert f">{name}</a>" in system, name
    assert 'class="app-auth ' not in page and 'class="app-system module' in page
    assert page.index(">AI models</a>") < page.index(">Tenant API keys</a>") < page.index(">Usage records</a>")
    # every app's own page and the side bar still work
    assert admin_client.get("/admin/auth/").status_code == 200
    assert admin_client.get("/admin/providers/").status_code == 200
    assert ">System settings</a>" in admin_client.get(USAGE).content.decode()


def test_index_for_a_tenant_admin_lists_only_what_they_may_see(django_user_model, tenant):
    page = logged_in(tenant_admin(django_user_model, tenant)).get("/admin/").content.decode()
    assert "Providers and models" in page and "System settings" not in page


# --- the usage list ---------------------------------------------------------------------------------------------

def test_usage_charts_and_breakdown_follow_the_filters(admin_client, world, tenant, other_tenant):
    assert admin_client.get(USAGE).context["totals"]["calls"] == 3  # without a date range: the last 24 hours
    since = (timezone.now() - timedelta(days=5)).strftime("%Y-%m-%d")
    response = admin_client.get(USAGE, {"created_at__gte": since})
    assert response.context["totals"]["calls"] == 4
    assert sum(row[1] for row in response.context["charts"][0].rows) == 4  # daily: records span 3 days
    page = response.content.decode()
    assert "<title>Calls and errors per day</title>" in page and 'id="usage-breakdown"' in page

    response = admin_client.get(USAGE, {"tenant__id__exact": str(tenant.pk)})
    charts = response.context["charts"]
    assert sum(row[1] for row in charts[0].rows) == 3 and sum(row[2] for row in charts[0].rows) == 1
    assert "<title>Calls and errors per hour</title>" in response.content.decode()
    tenants, providers, models = response.context["breakdowns"]
    assert [(r["name"], r["calls"], r["errors"], r["cost"], r["mean_latency_ms"]) for r in tenants["rows"]] == [
        ("Acme Municipality", 3, 1, Decimal("0.750000"), 200.0)]
    assert [r["name"] for r in providers["rows"]] == ["Shared OpenAI"]
    assert models["rows"][0]["name"] == "chat-large (Shared OpenAI)"
    assert f"tenant__id__exact={tenant.pk}" in models["rows"][0]["url"]  # narrowing keeps the active filters
    assert f"model__id__exact={world['chat'].pk}" in models["rows"][0]["url"]

    response = admin_client.get(USAGE, {"status__exact": "error"})
    assert response.context["totals"]["calls"] == 1
    response = admin_client.get(USAGE, {"model__id__exact": world["other_model"].pk, "created_at__gte": since})
    assert response.context["breakdowns"][0]["rows"][0]["name"] == "Other Region"


def test_usage_list_for_a_tenant_admin_shows_their_numbers_only(django_user_model, world, tenant):
    response = logged_in(tenant_admin(django_user_model, tenant)).get(USAGE)
    assert response.context["totals"]["calls"] == 3
    page = response.content.decode()
    assert "Other Region" not in page and "other-model" not in page


def read_csv(response) -> list[dict]:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response.streaming
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_export_of_the_filtered_rows(admin_client, world, tenant):
    created = api_key_create(actor=SYSTEM, tenant=tenant, name="intranet bot", scopes=["*"])
    record(tenant, world["chat"], requested="=HYPERLINK(\"http://x\")", api_key=created.api_key, request_id="req-1")
    page = admin_client.get(USAGE, {"tenant__id__exact": str(tenant.pk)}).content.decode()
    assert f'href="/admin/providers/usagerecord/export/?tenant__id__exact={tenant.pk}"' in page

    response = admin_client.get(USAGE + "export/", {"tenant__id__exact": str(tenant.pk)})
    body_rows = read_csv(response)
    assert len(body_rows) == 4 and {r["tenant"] for r in body_rows} == {"Acme Municipality"}
    row = next(r for r in body_rows if r["request_id"] == "req-1")
    assert row["api_key_name"] == "intranet bot" and row["requested_model"] == "'=HYPERLINK(\"http://x\")"
    assert row["cost"] == "0.25000000" and row["provider"] == "Shared OpenAI" and row["model"] == "chat-large"
    raw = "\n".join(",".join(r.values()) for r in body_rows)
    assert created.api_key.prefix not in raw and created.plaintext not in raw
    assert len(read_csv(admin_client.get(USAGE + "export/"))) == 5
    assert len(read_csv(admin_client.get(USAGE + "export/", {"status__exact": "error"}))) == 1
    assert admin_client.get(USAGE + "export/", {"nonsense__field": "1"}).status_code in (400, 302)


def test_csv_export_of_a_tenant_admin_holds_only_their_tenant(django_user_model, world, tenant, other_tenant, client):
    user = tenant_admin(django_user_model, tenant)
    export = logged_in(user).get(USAGE + "export/")
    rows = read_csv(export)
    assert len(rows) == 3 and {r["tenant"] for r in rows} == {"Acme Municipality"}
    # Asking for the other tenant's rows by filter never yields them (Django drops a filter with one choice).
    theirs = logged_in(user).get(USAGE + "export/", {"tenant__id__exact": str(other_tenant.pk)})
    assert {r["tenant"] for r in read_csv(theirs)} <= {"Acme Municipality"}
    assert client.get(USAGE + "export/").status_code == 302  # anonymous: to the login page
    no_perm = make_user(django_user_model, "no-perm", tenant=tenant, role="admin", is_staff=True)
    assert logged_in(no_perm).get(USAGE + "export/").status_code == 403


# --- the provider page and the model list ---------------------------------------------------------------------

def test_provider_page_shows_health_history_and_changes(admin_client):
    provider = make_provider(name="Flaky")
    check(provider, "healthy", ago=timedelta(hours=4), latency=40)
    check(provider, "healthy", ago=timedelta(hours=3), latency=45)
    check(provider, "down", ago=timedelta(hours=2), latency=0, message="Could not connect to the API")
    check(provider, "healthy", ago=timedelta(hours=1), kind=ProviderCheck.Kind.TEST, latency=60)
    check(provider, "unknown", ago=timedelta(minutes=30), kind=ProviderCheck.Kind.DISCOVER)  # not a health check
    page = admin_client.get(f"/admin/providers/provider/{provider.pk}/change/").content.decode()
    assert 'id="health-history"' in page and "<title>Health history: latency of the last 4 checks" in page
    changes = page[page.index('id="health-changes"'):]
    changes = changes[:changes.index("</table>")]
    assert changes.count("<tr><td title=") == 3  # healthy (first), down, healthy again
    assert "Could not connect to the API" in changes
    assert changes.index('class="check-healthy">Healthy') < changes.index('class="check-down">Down')
    assert "<h3>Last checks</h3>" in page and page.count("Model discovery") == 1  # the list is still there once


def test_model_list_shows_health_and_enabled_for(admin_client, django_user_model, tenant, other_tenant):
    instance = make_provider(name="Instance")
    Provider.objects.filter(pk=instance.pk).update(health_status="degraded")
    enabled = make_model(instance, model_id="enabled-model")
    for who in (tenant, other_tenant):
        services.model_set_tenant_enabled(actor=SYSTEM, model=enabled, tenant=who, enabled=True)
    wide = make_provider(name="Everyone", instance_wide=True)
    make_model(wide, model_id="wide-model", instance_wide=True)
    own = make_model(make_provider(tenant=tenant, name="Acme own"), model_id="own-model")
    check(own.provider, "healthy", ago=timedelta(minutes=5), kind=ProviderCheck.Kind.VALIDATE, model=own)

    def row(page, model_id):
        start = page.index(f">{model_id}</a>")
        return page[start:page.index("</tr>", start)]

    page = admin_client.get(MODELS).content.decode()
    assert "Acme Municipality, Other Region" in row(page, "enabled-model")
    assert "Degraded" in row(page, "enabled-model") and "not validated" in row(page, "enabled-model")
    assert "All tenants" in row(page, "wide-model")
    assert "Acme Municipality" in row(page, "own-model") and "validated" in row(page, "own-model")

    page = logged_in(tenant_admin(django_user_model, tenant)).get(MODELS).content.decode()
    assert "Acme Municipality" in row(page, "enabled-model") and "Other Region" not in page


def test_model_list_runs_a_constant_number_of_queries(admin_client, tenant, other_tenant):
    provider = make_provider(name="Many")

    def add(count):
        for _ in range(count):
            model = AIModel.objects.create(provider=provider, model_id=f"m-{AIModel.objects.count()}")
            services.model_set_tenant_enabled(actor=SYSTEM, model=model, tenant=tenant, enabled=True)
            services.model_set_tenant_enabled(actor=SYSTEM, model=model, tenant=other_tenant, enabled=True)
            check(provider, "healthy", ago=timedelta(minutes=1), kind=ProviderCheck.Kind.VALIDATE, model=model)

    def count():
        admin_client.get(MODELS)
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(MODELS).status_code == 200
        return len(ctx.captured_queries)

    add(2)
    few = count()
    add(20)
    assert count() == few


# --- percentiles: PostgreSQL's percentile_cont and the Python fallback (SQLite) agree -------------------------

def test_percentile_matches_percentile_cont():
    assert dash.percentile([], 0.5) is None
    assert dash.percentile([300, 100, 200], 0.5) == 200
    assert dash.percentile([100, 200, 300], 0.95) == pytest.approx(290)
    assert dash.percentile([100, 200, 300, 1000], 0.95) == pytest.approx(895)


def test_python_fallback_gives_the_database_numbers(world, tenant, monkeypatch):
    qs = UsageRecord.objects.all()
    end = timezone.now()
    start = end - timedelta(days=4)
    native = (dash.usage_totals(qs), dash.usage_buckets(qs, unit="day", start=start, end=end))
    monkeypatch.setattr(dash, "_is_postgres", lambda qs: False)  # the SQLite path, on whichever database this is
    fallback = (dash.usage_totals(qs), dash.usage_buckets(qs, unit="day", start=start, end=end))
    assert fallback == native
    assert (native[0]["p50_ms"], native[0]["p95_ms"]) == (250.0, 895.0)
    monkeypatch.setattr(dash, "PERCENTILE_SAMPLE", 2)  # beyond the sample: a random subset, still a latency seen
    assert dash.usage_totals(qs)["p50_ms"] in {100.0, 150.0, 200.0, 250.0, 300.0, 550.0, 600.0, 650.0, 1000.0}


def test_dashboard_selector_scopes_by_principal(world, tenant, django_user_model):
    board = dash.dashboard_get(principal=Principal.for_user(tenant_admin(django_user_model, tenant)))
    assert board.health_counts["down"] == 0 and board.failing == []
    assert [w.totals["calls"] for w in board.windows] == [3, 3]
    assert [r["tenant__name"] for r in board.top_tenants["cost"]] == ["Acme Municipality"]
