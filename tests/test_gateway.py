"""The /v1 gateway end to end: the official openai client -> our ASGI app (uvicorn) -> LiteLLM -> fake upstream."""
import json

import httpx
import openai
import pytest

from credentials.services import credential_set
from providers import services
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create, api_key_revoke

from .conftest import CANARY, dump_tables_text, openai_client, usage_rows
from .factories import make_model, make_provider, upstream_provider

REPLY = "Hello from fake upstream"


@pytest.fixture
def world(gateway, upstream, tenant, other_tenant):
    """Providers of three types pointing at the fake upstream, and API keys for two tenants."""
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    az = upstream_provider(upstream, "azure")
    make_model(az, model_id="gpt4o-deploy", alias="smart")
    an = upstream_provider(upstream, "anthropic")
    make_model(an, model_id="claude-3-5-haiku-20241022", alias="smart")
    own = make_provider(tenant=tenant, name="Acme vLLM", provider_type="hosted_vllm",
                        base_url=upstream.url + "/v1", api_key="vllm-acme-key-0004")
    make_model(own, model_id="meta-llama/Llama-3.1-8B-Instruct", alias="llama")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    other = api_key_create(actor=SYSTEM, tenant=other_tenant, name="bot", scopes=["gateway:Use"]).plaintext
    return {"key": key, "other_key": other, "openai": oa, "azure": az, "anthropic": an, "own": own}


def test_chat_completion_uses_provider_key_and_records_usage(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    reply = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi there"}])
    assert reply.choices[0].message.content == REPLY
    assert reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 4
    assert upstream.keys_seen() == ["sk-provider-openai-0001"]
    assert upstream.last_request()["path"] == "/v1/chat/completions"
    [row] = usage_rows(gateway)
    assert (row.status, row.tokens_in, row.tokens_out, row.streamed, row.requested_model) == ("ok", 2, 4, False, "fast")
    assert row.cost > 0 and row.model.model_id == "gpt-4o-mini"  # LiteLLM's price for gpt-4o-mini


def test_streaming_chat(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    stream = client.chat.completions.create(model="openai/gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == REPLY
    [row] = usage_rows(gateway)
    assert row.streamed and row.status == "ok" and row.ttft_ms is not None and row.tokens_out == 4


def test_streaming_sse_is_exactly_openai_shaped(gateway, upstream, world):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {world['key']}"},
                      json={"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks), lines
    assert chunks[-1].get("usage", {}).get("completion_tokens") == 4 and chunks[-1]["choices"] == [], lines


def test_embeddings(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    result = client.embeddings.create(model="embed", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    assert upstream.last_request()["path"] == "/v1/embeddings"


def test_models_lists_only_what_the_caller_may_use(gateway, world):
    mine = {m.id for m in openai_client(gateway, world["key"]).models.list()}
    theirs = {m.id for m in openai_client(gateway, world["other_key"]).models.list()}
    assert {"fast", "smart", "llama", "openai/gpt-4o-mini", "azure/gpt4o-deploy",
            "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct"} <= mine
    assert "llama" not in theirs and "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct" not in theirs
    assert "fast" in theirs


def test_tenant_credential_reaches_upstream_and_never_another_tenants(gateway, upstream, world, tenant):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-acme-own-key-7777")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="azure", api_key="az-acme-own-key-8888",
                   endpoint=upstream.url, api_version="2024-06-01", deployment_name="gpt4o-deploy")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="anthropic", api_key="ant-acme-own-key-9999")
    mine = openai_client(gateway, world["key"])
    for model in ("openai/gpt-4o-mini", "azure/gpt4o-deploy", "anthropic/claude-3-5-haiku-20241022", "llama"):
        assert mine.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}]
                                            ).choices[0].message.content == REPLY
    assert upstream.keys_seen() == ["sk-acme-own-key-7777", "az-acme-own-key-8888", "ant-acme-own-key-9999",
                                    "vllm-acme-key-0004"]
    paths = [r["path"] for r in upstream.requests]
    assert paths[1] == "/openai/deployments/gpt4o-deploy/chat/completions" and paths[2] == "/v1/messages"
    upstream.reset()
    openai_client(gateway, world["other_key"]).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}])
    assert upstream.keys_seen() == ["sk-provider-openai-0001"]


def test_alias_fails_over_to_the_next_model(gateway, upstream, world):
    upstream.set_fault("status", status=500, path_contains="/openai/deployments")
    reply = openai_client(gateway, world["key"]).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == REPLY
    assert [r["path"] for r in upstream.requests][-1] == "/v1/messages"


def test_strict_mode_without_credential_is_a_clear_error(gateway, upstream, world, settings):
    settings.TENANT_CREDENTIALS_ENABLED = True
    with pytest.raises(openai.PermissionDeniedError) as exc:
        openai_client(gateway, world["key"]).chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "x"}])
    assert "No API key configured for provider 'openai'" in str(exc.value)
    assert upstream.requests == []


@pytest.mark.parametrize("fault,opts,error,status", [
    ("status", {"status": 401}, openai.APIStatusError, 502),
    ("status", {"status": 429, "retry_after": 7}, openai.RateLimitError, 429),
    ("status", {"status": 500}, openai.APIStatusError, 502),
    ("malformed", {}, openai.APIStatusError, 502),
    ("timeout", {"seconds": 3}, openai.APIStatusError, 504),
    ("close", {}, openai.APIStatusError, 502),
])
def test_upstream_failures_map_to_statuses(gateway, upstream, world, settings, fault, opts, error, status):
    settings.GATEWAY_TIMEOUT = 0.5
    upstream.set_fault(fault, **opts)
    with pytest.raises(error) as exc:
        openai_client(gateway, world["key"]).chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == status
    if status == 429:
        assert exc.value.response.headers["retry-after"] == "7"
    assert "sk-provider-openai-0001" not in exc.value.response.text
    [row] = usage_rows(gateway)
    assert row.status == "error" and row.http_status == status


def test_stream_dropped_midway_ends_with_an_error_event(gateway, upstream, world):
    upstream.set_fault("drop_stream")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {world['key']}"},
                      json={"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and "error" in json.loads(lines[-1][6:])
    [row] = usage_rows(gateway)
    assert row.status == "error" and row.streamed


@pytest.mark.parametrize("body,status,code", [
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
    ({"model": "fast", "messages": []}, 400, None),
    ({"model": "fast"}, 400, None),
    ({"model": "embed", "messages": [{"role": "user", "content": "x"}]}, 400, "model_type_mismatch"),
])
def test_bad_requests(gateway, world, body, status, code):
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {world['key']}"})
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if code:
        assert r.json()["error"]["code"] == code
    if status == 404:
        assert "fast" in r.json()["error"]["message"]  # says what the caller may use


def test_other_tenants_model_is_not_found_and_instance_model_not_enabled_is_forbidden(gateway, world):
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "llama", "messages": [{"role": "user", "content": "x"}]},
                   headers={"Authorization": f"Bearer {world['other_key']}"})
    assert r.status_code == 404
    hidden = make_provider(tenant=None, name="Private", base_url="http://127.0.0.1:9/v1")
    make_model(hidden, model_id="private-model")
    r = httpx.post(gateway.url + "/v1/chat/completions",
                   json={"model": "private-model", "messages": [{"role": "user", "content": "x"}]},
                   headers={"Authorization": f"Bearer {world['key']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


def test_auth_errors(gateway, world, tenant):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer eneo_abc_def"}):
        r = httpx.get(gateway.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    created = api_key_create(actor=SYSTEM, tenant=tenant, name="rest only", scopes=["aiProviders:ListAiProviders"])
    r = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {created.plaintext}"})
    assert r.status_code == 403
    api_key_revoke(actor=SYSTEM, api_key=created.api_key)
    from tenants.models import TenantApiKey

    bot = TenantApiKey.objects.get(tenant=tenant, name="bot")
    api_key_revoke(actor=SYSTEM, api_key=bot)
    r = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {world['key']}"})
    assert r.status_code == 401  # revocation takes effect at once


def test_rate_limit_and_budget(gateway, upstream, world, tenant):
    services.provider_update(actor=SYSTEM, provider=world["openai"], rpm=2)
    client = openai_client(gateway, world["key"])
    for _ in range(2):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert "rate limit (2 requests per minute)" in str(exc.value)
    services.provider_update(actor=SYSTEM, provider=world["openai"], rpm=None)
    from decimal import Decimal

    from tenants.services import tenant_update

    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("0"))
    gateway.flush_usage()
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert "budget" in str(exc.value)


def test_canary_tenant_key_never_leaks(gateway, upstream, world, tenant, all_logs):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key=CANARY)
    bodies = []
    client = openai_client(gateway, world["key"])
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert upstream.keys_seen() == [CANARY]
    for status in (401, 500, 429):
        upstream.set_fault("status", status=status, times=1)
        r = httpx.post(gateway.url + "/v1/chat/completions",
                       json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
                       headers={"Authorization": f"Bearer {world['key']}"})
        bodies.append(r.text)
    upstream.set_fault("drop_stream")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      json={"model": "fast", "stream": True, "messages": [{"role": "user", "content": "x"}]},
                      headers={"Authorization": f"Bearer {world['key']}"}) as r:
        bodies.append("".join(r.iter_lines()))
    usage_rows(gateway)
    assert not any(CANARY in b for b in bodies)
    assert not any(CANARY in line for line in all_logs["masked"])
    assert CANARY not in dump_tables_text()


def test_circuit_breaker_pauses_a_failing_provider(gateway, upstream, world, settings):
    breaker = gateway.gw.breaker
    breaker.reset()
    settings.GATEWAY_BREAKER_FAILURES, settings.GATEWAY_BREAKER_SECONDS = 2, 60
    upstream.set_fault("status", status=500, path_contains="/openai/deployments")
    client = openai_client(gateway, world["key"])
    for _ in range(4):  # "smart" = azure first, then anthropic
        assert client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}]).choices
    azure_calls = [r for r in upstream.requests if r["path"].startswith("/openai/deployments")]
    assert len(azure_calls) == 2  # after 2 failures azure is skipped, callers go straight to anthropic
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="azure/gpt4o-deploy", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 503 and exc.value.response.headers["retry-after"] == "60"
    assert len([r for r in upstream.requests if r["path"].startswith("/openai/deployments")]) == 2  # fail fast
    breaker.reset()


def test_usage_survives_deletions_before_the_flush(gateway, upstream, world, tenant, settings):
    settings.USAGE_FLUSH_SECONDS = 30  # nothing is flushed by itself during the test
    own = world["own"]
    openai_client(gateway, world["key"]).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "x"}])
    openai_client(gateway, world["other_key"]).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}])
    services.provider_delete(actor=SYSTEM, provider=own, force=True)  # the first call's provider and model
    rows = usage_rows(gateway, expected=2)
    assert len(rows) == 2 and {r.status for r in rows} == {"ok"}
    mine = next(r for r in rows if r.tenant_id == tenant.pk)
    assert mine.provider_id is None and mine.model_id is None and mine.requested_model == "llama"


def test_tokens_per_minute_limit(gateway, upstream, world):
    import time

    limiter = gateway.gw.limiter
    while time.time() % 60 > 55:  # the window is the calendar minute: don't straddle it
        time.sleep(0.5)
    limiter.local.tokens.clear()
    services.provider_update(actor=SYSTEM, provider=world["openai"], tpm=10)
    client = openai_client(gateway, world["key"])
    for _ in range(2):  # 6 tokens each (2 in, 4 out): the second call still starts below 10
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi there"}])
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi there"}])
    assert "token limit (10 tokens per minute)" in str(exc.value)
    assert int(exc.value.response.headers["retry-after"]) <= 60
    limiter.local.tokens.clear()


def test_v1_schema_and_docs_are_served(gateway):
    schema = httpx.get(gateway.url + "/v1/openapi.json")
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    docs = httpx.get(gateway.url + "/v1/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
    assert httpx.get(gateway.url + "/v1/no-such-thing").status_code == 404
