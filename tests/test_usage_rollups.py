"""Usage at scale (providers/rollups.py): hourly roll-ups kept by the usage writer in the raw insert's transaction,
their rebuild command, retention of raw records in batches, keyset pagination of the usage list (REST and admin),
and summaries that read roll-ups."""
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers import rollups
from providers.gateway import usage as ledger
from providers.models import UsageHourly, UsageRecord
from providers.selectors import Principal, usage_totals_by_model
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import usage_rows
from .factories import make_model, make_provider, upstream_provider

HI = [{"role": "user", "content": "hi there"}]
FIELDS = [f.attname for f in UsageHourly._meta.concrete_fields if f.name != "id"]


def hourly() -> list[tuple]:
    return sorted(tuple(str(v) for v in row) for row in UsageHourly.objects.values_list(*FIELDS))


def rows_at(tenant, model, moments, *, api_key_id=None, status="ok", latency=100) -> list[tuple]:
    """Usage rows (the writer's tuples) at the given moments."""
    rows = []
    for i, moment in enumerate(moments):
        row = list(ledger.usage_row(tenant.pk, api_key_id, "fast", "chat.completions", status=status,
                                    http_status=200 if status == "ok" else 502, request_id=f"r{i}", model=model,
                                    tokens_in=10 + i, tokens_out=5, cost=Decimal("0.001"), latency_ms=latency + i))
        row[15] = moment
        rows.append(tuple(row))
    return rows


@pytest.fixture
def chat_model(tenant):
    provider = make_provider(tenant=None, instance_wide=True, name="Shared")
    return make_model(provider, model_id="gpt-4o-mini", alias="fast")


# --- the writer keeps them -------------------------------------------------------------------------------------

def test_rollups_equal_the_raw_records_after_gateway_calls(gateway, upstream, tenant):
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"])
    headers = {"Authorization": f"Bearer {key.plaintext}"}
    url = gateway.url + "/v1/chat/completions"
    for body in ({"model": "fast", "messages": HI}, {"model": "fast", "messages": HI, "stream": True},
                 {"model": "fast", "messages": HI}, {"model": "no-such-model", "messages": HI},  # refused
                 {"model": "fast", "messages": HI, "bogus": 1}):  # refused: invalid body
        httpx.post(url, headers=headers, json=body, timeout=15).read()
    upstream.set_fault("status", status=500)
    assert httpx.post(url, headers=headers, json={"model": "fast", "messages": HI}, timeout=15).status_code == 502
    upstream.clear_faults()
    raw = usage_rows(gateway, 6)
    assert {r.status for r in raw} == {"ok", "error", "refused"} and len(raw) == 6

    written = hourly()
    assert sum(UsageHourly.objects.values_list("calls", flat=True)) == 6
    assert sum(UsageHourly.objects.values_list("errors", flat=True)) == 1
    UsageHourly.objects.all().delete()
    rollups.rollups_rebuild()  # the raw records' aggregate, computed by the database
    assert hourly() == written


def test_a_failed_batch_leaves_neither_raw_records_nor_rollups(transactional_db, tenant, chat_model, monkeypatch):
    now = timezone.now()
    ledger._write(rows_at(tenant, chat_model, [now]), {})
    before = (UsageRecord.objects.count(), hourly())

    def add_then_fail(cursor, batch):
        rollups.rollups_add(cursor, batch)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(ledger, "rollups_add", add_then_fail)
    with pytest.raises(RuntimeError):
        ledger._write(rows_at(tenant, chat_model, [now, now]), {})
    assert (UsageRecord.objects.count(), hourly()) == before


def test_concurrent_batches_add_up(transactional_db, tenant, chat_model):
    now = timezone.now()
    for _ in range(3):
        ledger._write(rows_at(tenant, chat_model, [now, now - timedelta(hours=1)]), {})
    assert sorted(UsageHourly.objects.values_list("calls", flat=True)) == [3, 3]
    row = UsageHourly.objects.get(hour=rollups.floor_hour(now))
    assert (row.tokens_in, row.cost, row.latency_ms_sum, row.latency_ms_min, row.latency_ms_max) == (
        30, Decimal("0.003"), 300, 100, 100)
    assert row.lat_02 == 3  # 100 ms: over 50, up to 100


# --- rebuild ---------------------------------------------------------------------------------------------------

def test_rebuild_command_builds_rollups_of_existing_records(transactional_db, tenant, chat_model):
    now = timezone.now()
    moments = [now - timedelta(hours=h, minutes=m) for h in (1, 2, 30) for m in (5, 10)]
    ledger._write(rows_at(tenant, chat_model, moments), {})
    expected = hourly()
    UsageHourly.objects.all().delete()  # records from before the roll-ups existed
    call_command("usage_rollups_rebuild", "--chunk-hours", "5")
    assert hourly() == expected
    call_command("usage_rollups_rebuild", "--since", (now - timedelta(hours=3)).isoformat())  # idempotent
    assert hourly() == expected


# --- retention -------------------------------------------------------------------------------------------------

def test_retention_deletes_only_old_raw_records_in_batches_and_keeps_rollups(transactional_db, tenant, chat_model,
                                                                            settings):
    now = timezone.now()
    old = [now - timedelta(days=40, minutes=i) for i in range(5)]
    young = [now - timedelta(days=10, minutes=i) for i in range(3)]
    ledger._write(rows_at(tenant, chat_model, old + young), {})
    kept = hourly()
    principal = Principal(tenant=tenant)
    summary = usage_totals_by_model(principal=principal)
    assert summary[0]["calls"] == 8

    settings.USAGE_RETENTION_DAYS = 30
    with CaptureQueriesContext(connection) as ctx:
        assert rollups.usage_retention_run(batch_size=2, pause=0) == 5
    deletes = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1 ids, each by primary key
    assert all("created_at" not in sql for sql in deletes)
    assert sorted(UsageRecord.objects.values_list("created_at", flat=True)) == sorted(young)
    assert hourly() == kept
    assert usage_totals_by_model(principal=principal) == summary  # summaries read roll-ups
    assert rollups.usage_retention_run(batch_size=2, pause=0) == 0

    settings.USAGE_RETENTION_DAYS = 0  # kept for ever
    assert rollups.usage_retention_run() == 0 and UsageRecord.objects.count() == 3


def test_rebuild_leaves_hours_retention_has_reached(transactional_db, tenant, chat_model, settings):
    now = timezone.now()
    ledger._write(rows_at(tenant, chat_model, [now - timedelta(days=40), now - timedelta(hours=2)]), {})
    settings.USAGE_RETENTION_DAYS = 30
    rollups.usage_retention_run(pause=0)
    rollups.rollups_rebuild(since=now - timedelta(days=50))
    assert sum(UsageHourly.objects.values_list("calls", flat=True)) == 2  # the old hour's roll-up stays


def test_summary_with_partial_hours_equals_the_raw_records(transactional_db, tenant, chat_model):
    now = timezone.now()
    moments = [now - timedelta(minutes=m) for m in range(0, 300, 7)]
    ledger._write(rows_at(tenant, chat_model, moments), {})
    from providers.selectors import usage_list, usage_summary

    principal = Principal(tenant=tenant)
    for since, until in ((now - timedelta(minutes=200), now - timedelta(minutes=13)),
                         (now - timedelta(minutes=20), now - timedelta(minutes=10)), (None, None),
                         (now - timedelta(hours=3), None)):
        expected = usage_summary(usage_list(principal=principal, since=since, until=until))
        assert usage_totals_by_model(principal=principal, since=since, until=until) == expected


# --- keyset pagination -----------------------------------------------------------------------------------------

def test_rest_list_pages_by_cursor_without_duplicates_or_gaps_while_records_are_written(transactional_db, client,
                                                                                         tenant, chat_model):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="reader", scopes=["usage:ReadUsage"])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key.plaintext}"}
    now = timezone.now() - timedelta(minutes=5)
    ledger._write(rows_at(tenant, chat_model, [now - timedelta(seconds=i // 3) for i in range(23)]), {})  # ties
    expected = list(UsageRecord.objects.order_by("-created_at", "-id").values_list("id", flat=True))

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/usage", params, **headers).json()
        assert page["count"] == (23 if cursor is None else None)  # counted only without a cursor
        seen += [item["id"] for item in page["items"]]
        ledger._write(rows_at(tenant, chat_model, [timezone.now()]), {})  # newer records meanwhile
        cursor, pages = page["next_cursor"], pages + 1
        if not cursor:
            break
    assert seen == expected and pages == 5
    assert client.get("/api/v1/usage", {"cursor": "not-a-cursor"}, **headers).status_code == 422
    assert client.get("/api/v1/usage", {"limit": 5, "offset": 5}, **headers).json()["items"][0]["id"]


def test_admin_list_pages_without_counting(transactional_db, admin_client, tenant, chat_model):
    now = timezone.now() - timedelta(minutes=5)
    ledger._write(rows_at(tenant, chat_model, [now - timedelta(seconds=i) for i in range(250)]), {})
    ids = []
    for number in (1, 2, 3):
        with CaptureQueriesContext(connection) as ctx:
            response = admin_client.get("/admin/providers/usagerecord/", {"p": number})
        assert response.status_code == 200
        assert not [q for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()
                    and "usagerecord" in q["sql"]]  # no COUNT(*) over the raw records
        ids += [row.pk for row in response.context["cl"].result_list]
        assert response.context["totals"]["calls"] == 250  # from the roll-ups
    assert ids == list(UsageRecord.objects.order_by("-created_at", "-id").values_list("id", flat=True))
    page = admin_client.get("/admin/providers/usagerecord/", {"p": 3}).content.decode()
    assert "class=\"showall\"" not in page  # no "Show all" of millions
    # a filter the roll-ups do not hold reads the raw records: same totals
    assert admin_client.get("/admin/providers/usagerecord/", {"http_status__exact": 200}).context[
        "totals"]["calls"] == 250
