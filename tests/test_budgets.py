"""Budgets, cost and key use in the usage ledger (providers/gateway/usage.py): a monthly budget enforced across
gateways through Redis, the remaining budget in a response header and the usage summary, the three cost paths
(provider-reported, the model's prices, LiteLLM's price list) and ProviderKey.last_used_at written per flush.

Live: httpx or the official client -> our ASGI app (uvicorn) -> LiteLLM -> the fake upstream."""
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.gateway.usage import UsageWriter, usage_row
from providers.models import ProviderKey, UsageRecord
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.services import tenant_update

from .conftest import LiveGateway, usage_rows
from .factories import make_model, make_provider, upstream_provider

HI = [{"role": "user", "content": "hi there"}]
PER_TOKEN = Decimal("1000000")  # a price per million tokens that makes every input token cost 1


@pytest.fixture
def world(gateway, upstream, tenant):
    oa = upstream_provider(upstream, "openai")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use", "usage:ReadUsage"])
    return {"openai": oa, "key": key.plaintext, "headers": {"Authorization": f"Bearer {key.plaintext}"}}


@pytest.fixture
def reporting_upstream(upstream):
    """The fake upstream, reporting a cost in its chat answers' usage (as OpenRouter does) while the test sets it."""
    yield upstream
    upstream.state.usage_cost = None


def chat(gateway, headers, model, *, stream=False) -> httpx.Response:
    body = {"model": model, "messages": HI, **({"stream": True} if stream else {})}
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=headers, json=body, timeout=15)
    r.read()
    return r


def last_record() -> UsageRecord:
    return UsageRecord.objects.order_by("-id").first()


# --- the three cost paths ----------------------------------------------------------------------------------------

def test_cost_from_the_models_prices(gateway, world):
    make_model(world["openai"], model_id="priced", input_cost_per_million=Decimal("3"),
               output_cost_per_million=Decimal("15"))
    for stream in (False, True):
        assert chat(gateway, world["headers"], "openai/priced", stream=stream).status_code == 200
    rows = usage_rows(gateway, 2)
    for row in rows:
        assert row.tokens_in and row.tokens_out
        assert row.cost == ((row.tokens_in * 3 + row.tokens_out * 15) / Decimal(1_000_000)).quantize(Decimal("1e-8"))


def test_cost_from_litellms_price_list_when_the_model_has_none(gateway, world):
    from providers.llm import litellm

    model = make_model(world["openai"], model_id="gpt-4o-mini", from_registry=False)  # no prices of its own
    assert model.input_cost_per_million is None and model.output_cost_per_million is None
    make_model(world["openai"], model_id="not-in-any-price-list", from_registry=False)
    listed = litellm.model_cost["gpt-4o-mini"]
    for stream in (False, True):  # (a stream's last chunk carries LiteLLM's estimate: not taken as reported)
        assert chat(gateway, world["headers"], "openai/gpt-4o-mini", stream=stream).status_code == 200
    assert chat(gateway, world["headers"], "openai/not-in-any-price-list").status_code == 200
    *priced, unlisted = usage_rows(gateway, 3)
    for row in priced:
        expected = Decimal(str(listed["input_cost_per_token"])) * row.tokens_in + \
            Decimal(str(listed["output_cost_per_token"])) * row.tokens_out
        assert row.cost == expected.quantize(Decimal("1e-8")) and row.cost > 0
    assert unlisted.tokens_in and unlisted.cost == 0


def test_cost_reported_by_the_provider_wins(gateway, world, reporting_upstream):
    make_model(world["openai"], model_id="priced", input_cost_per_million=Decimal("3"),
               output_cost_per_million=Decimal("15"))
    reporting_upstream.state.usage_cost = 0.0123
    plain = chat(gateway, world["headers"], "openai/priced")
    streamed = chat(gateway, world["headers"], "openai/priced", stream=True)
    assert plain.status_code == streamed.status_code == 200
    assert "cost" not in plain.json()["usage"]  # recorded, not passed on
    assert [r.cost for r in usage_rows(gateway, 2)] == [Decimal("0.01230000")] * 2


# --- budgets: the header, the summary, the refusal ----------------------------------------------------------------

def test_budget_header_and_usage_summary(gateway, world, tenant):
    make_model(world["openai"], model_id="priced", input_cost_per_million=PER_TOKEN, output_cost_per_million=0)
    summary = httpx.get(gateway.url + "/api/v1/usage/summary", headers=world["headers"]).json()
    assert summary["monthly_budget"] is None and summary["budget_remaining"] is None
    assert Decimal(summary["spent_this_month"]) == 0 and summary["models"] == []

    r = chat(gateway, world["headers"], "openai/priced")  # no budget: no header, no Redis
    assert r.status_code == 200 and "x-eneo-budget-remaining" not in r.headers
    first = usage_rows(gateway, 1)[0].cost

    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("100"))
    r = chat(gateway, world["headers"], "openai/priced")
    assert r.status_code == 200
    second = usage_rows(gateway, 2)[-1].cost
    assert r.headers["x-eneo-budget-limit"] == "100.0000"
    assert Decimal(r.headers["x-eneo-budget-remaining"]) == 100 - first - second

    streamed = chat(gateway, world["headers"], "openai/priced", stream=True)  # before its own cost
    assert Decimal(streamed.headers["x-eneo-budget-remaining"]) == 100 - first - second
    third = usage_rows(gateway, 3)[-1].cost

    summary = httpx.get(gateway.url + "/api/v1/usage/summary", headers=world["headers"]).json()
    assert Decimal(summary["monthly_budget"]) == 100
    assert Decimal(summary["spent_this_month"]) == first + second + third
    assert Decimal(summary["budget_remaining"]) == 100 - first - second - third
    assert summary["models"][0]["calls"] == 3


def test_summary_budget_fields_for_the_super_key(client, tenant, super_headers):
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("5"))
    everyone = client.get("/api/v1/usage/summary", **super_headers).json()
    assert (everyone["monthly_budget"], everyone["spent_this_month"], everyone["budget_remaining"]) == \
        (None, None, None)
    one = client.get(f"/api/v1/usage/summary?tenant_id={tenant.pk}", **super_headers).json()
    assert (Decimal(one["monthly_budget"]), Decimal(one["spent_this_month"]), Decimal(one["budget_remaining"])) == \
        (5, 0, 5)


def test_budget_shared_by_two_gateways_through_redis(gateway, world, tenant, settings, redis_url):
    """Two gateways (each its own usage writer, as two worker processes have) share the month's spend through
    Redis: once one of them spent the budget, the other refuses the next call at once (without Redis it would go
    on for up to a minute on the spend it read before)."""
    import redis

    settings.RATE_LIMIT_REDIS_URL = redis_url
    make_model(world["openai"], model_id="priced", input_cost_per_million=PER_TOKEN, output_cost_per_million=0)
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("10"))
    other = LiveGateway()
    try:
        r = chat(other, world["headers"], "openai/priced")
        assert r.status_code == 200  # the other gateway has read the spend (and seeded the counter)
        per_call = Decimal(r.headers["x-eneo-budget-limit"]) - Decimal(r.headers["x-eneo-budget-remaining"])
        assert per_call > 0
        answered = 1
        while True:
            r = chat(gateway, world["headers"], "openai/priced")
            if r.status_code != 200:
                break
            answered += 1
            assert answered < 20
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert answered == -(-10 // per_call)  # calls admitted until the spend reached the budget, not one more
        refused = chat(other, world["headers"], "openai/priced")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "insufficient_quota"
        assert "budget" in refused.json()["error"]["message"]
        counters = list(redis.Redis.from_url(redis_url).scan_iter(f"eneo:spend:{tenant.pk}:*"))
        assert len(counters) == 1 and redis.Redis.from_url(redis_url).ttl(counters[0]) > 0
    finally:
        other.stop()


def test_budget_counter_is_seeded_again_after_the_tenant_changed(gateway, world, tenant, settings, redis_url):
    """A budget removed and set again within the month: what was spent in between (not counted in Redis: no
    budget, no Redis call) is in the counter again, seeded from the database."""
    settings.RATE_LIMIT_REDIS_URL = redis_url
    make_model(world["openai"], model_id="priced", input_cost_per_million=PER_TOKEN, output_cost_per_million=0)
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("1000"))
    assert chat(gateway, world["headers"], "openai/priced").status_code == 200
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=None)
    assert chat(gateway, world["headers"], "openai/priced").status_code == 200
    rows = usage_rows(gateway, 2)
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("1000"))
    r = chat(gateway, world["headers"], "openai/priced")
    third = usage_rows(gateway, 3)[-1].cost
    assert Decimal(r.headers["x-eneo-budget-remaining"]) == 1000 - sum(row.cost for row in rows) - third


# --- ProviderKey.last_used_at ------------------------------------------------------------------------------------

def test_provider_key_last_used_after_the_flush(gateway, world):
    make_model(world["openai"], model_id="gpt-4o-mini")
    key = ProviderKey.objects.get(provider=world["openai"])
    assert key.last_used_at is None
    assert chat(gateway, world["headers"], "openai/gpt-4o-mini").status_code == 200
    gateway.flush_usage()
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_provider_keys_are_written_once_per_flush(transactional_db, tenant):
    provider = make_provider(instance_wide=True, base_url="http://127.0.0.1:9/v1")  # never called here
    model = make_model(provider, model_id="gpt-4o-mini")
    key = ProviderKey.objects.get(provider=provider)

    async def calls():
        writer = UsageWriter()
        for _ in range(5):
            writer.provider_key_used(key.pk)
            writer.record(usage_row(tenant.pk, None, "x", "chat.completions", status="ok", http_status=200,
                                    request_id="r", model=model, tokens_in=1, tokens_out=1))
        await writer.flush()
        writer._task.cancel()

    with CaptureQueriesContext(connection) as queries:
        async_to_sync(calls)()
    updates = [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "providerkey" in q["sql"]]
    assert len(updates) == 1
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert UsageRecord.objects.filter(tenant=tenant).count() == 5
