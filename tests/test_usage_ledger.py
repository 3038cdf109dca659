"""The usage ledger (providers/gateway/usage.py): one record per /v1 call that reached an upstream or was refused for
a known tenant, with what was delivered, even when the client goes away.

Live: the official clients or httpx -> our ASGI app (uvicorn) -> LiteLLM -> the fake upstream."""
import json
import time
from decimal import Decimal

import httpx
import openai
import pytest

from providers import services
from providers.models import UsageRecord
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import openai_client
from .factories import make_model, make_provider, upstream_provider

REPLY = "Hello from fake upstream"
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def world(gateway, upstream, tenant):
    oa = upstream_provider(upstream, "openai")
    fast = make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"])
    return {"key": key.plaintext, "api_key": key.api_key, "openai": oa, "fast": fast,
            "headers": {"Authorization": f"Bearer {key.plaintext}"}}


@pytest.fixture
def slow_upstream(upstream):
    """The fake upstream, answering after a delay the test sets (`set_latency`); back to none afterwards."""
    yield upstream
    upstream.set_latency(0, spread_stream=False)


def rows_when(gateway, expected: int, timeout: float = 8.0) -> list[UsageRecord]:
    """The usage records once `expected` of them were written (records of a call whose client went away may come
    after the client gave up), and no more than that after a further flush."""
    deadline = time.monotonic() + timeout
    while True:
        gateway.flush_usage()
        rows = list(UsageRecord.objects.order_by("id"))
        if len(rows) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    gateway.flush_usage()
    return list(UsageRecord.objects.order_by("id"))


def count(text: str = "", messages=None) -> int:
    from providers.llm import litellm

    if messages is not None:
        return litellm.token_counter(model="gpt-4o-mini", messages=messages)
    return litellm.token_counter(model="gpt-4o-mini", text=text, count_response_tokens=True)


def chat_paths(upstream) -> list[dict]:
    return [r for r in upstream.requests if r["path"].endswith("/chat/completions")]


# --- answered calls ------------------------------------------------------------------------------------------

def test_answered_calls_are_ok_with_the_providers_tokens(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    client.chat.completions.create(model="fast", messages=HI)
    stream = client.chat.completions.create(model="fast", messages=HI, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    client.embeddings.create(model="embed", input="one two three")
    chat, streamed, embedded = rows_when(gateway, 3)
    for row in (chat, streamed):
        assert (row.status, row.http_status, row.tokens_in, row.tokens_out, row.tokens_estimated) == \
            ("ok", 200, 2, 4, False)
        assert row.cost > 0 and row.model_id == world["fast"].pk and row.api_key_id == world["api_key"].pk
    assert (streamed.streamed, chat.streamed) == (True, False)
    assert (embedded.status, embedded.endpoint, embedded.tokens_in, embedded.tokens_out) == ("ok", "embeddings", 3, 0)


# --- the client goes away --------------------------------------------------------------------------------------

def test_stream_closed_by_the_client_counts_what_was_delivered(gateway, slow_upstream, world):
    slow_upstream.set_latency(2000, spread_stream=True)  # 8 events, one every 250 ms
    pieces = []
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=world["headers"], timeout=10,
                      json={"model": "fast", "stream": True, "messages": HI}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    pieces.append(delta["content"])
            if len(pieces) == 2:  # "Hello", " from": then the client leaves, before the usage chunk
                break
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.streamed, row.tokens_estimated) == ("client_closed", 499, True, True)
    assert row.tokens_in == count(messages=HI)
    assert count("".join(pieces)) <= row.tokens_out < count(REPLY)  # what was sent, not the whole answer
    assert row.cost > 0 and row.model_id == world["fast"].pk and row.ttft_ms is not None
    assert len(chat_paths(slow_upstream)) == 1


def test_stream_closed_before_its_first_chunk_counts_the_prompt(gateway, slow_upstream, world):
    slow_upstream.set_latency(1500)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", headers=world["headers"], timeout=0.4,
                   json={"model": "fast", "stream": True, "messages": HI})
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.streamed, row.tokens_estimated) == ("client_closed", 499, True, True)
    assert (row.tokens_in, row.tokens_out) == (count(messages=HI), 0)
    assert len(chat_paths(slow_upstream)) == 1


@pytest.mark.parametrize("path,body,tokens", [
    ("/v1/chat/completions", {"model": "fast", "messages": HI}, (2, 4)),
    ("/v1/embeddings", {"model": "embed", "input": "one two three"}, (3, 0)),
])
def test_non_streamed_call_whose_client_left_is_recorded_with_the_providers_usage(gateway, slow_upstream, world,
                                                                                   path, body, tokens):
    """The lane cancels the request's task when the client disconnects; the upstream call, paid for all the same,
    runs to its end and is recorded with the tokens the provider reports."""
    slow_upstream.set_latency(1200)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + path, headers=world["headers"], json=body, timeout=0.3)
    gateway.flush_usage()
    assert UsageRecord.objects.count() == 0  # the upstream has not answered yet
    [row] = rows_when(gateway, 1)
    assert time.monotonic() - started >= 1.2
    assert (row.status, row.http_status, row.streamed, row.tokens_estimated) == ("client_closed", 499, False, False)
    assert (row.tokens_in, row.tokens_out) == tokens and row.latency_ms >= 1200
    assert len(slow_upstream.requests) == 1


# --- refused calls (known tenant) ------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,status,code", [
    ("/v1/chat/completions", {"model": "fast", "messages": HI, "api_base": "http://evil"}, 400, "unknown_parameter"),
    ("/v1/chat/completions", {"model": "fast", "messages": []}, 400, None),
    ("/v1/chat/completions", {"model": "embed", "messages": HI}, 400, "model_type_mismatch"),
    ("/v1/chat/completions", {"model": "no-such-model", "messages": HI}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": "private-model", "messages": HI}, 403, "model_not_allowed"),
    ("/v1/embeddings", {"model": "embed", "input": ""}, 400, None),
])
def test_refused_calls_are_recorded(gateway, upstream, world, path, body, status, code):
    hidden = make_provider(tenant=None, name="Private", base_url=upstream.url + "/v1")
    make_model(hidden, model_id="private-model")
    r = httpx.post(gateway.url + path, json=body, headers=world["headers"])
    assert r.status_code == status, r.text
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.tokens_in, row.tokens_out, row.cost) == \
        ("refused", status, 0, 0, Decimal(0))
    assert row.error_type == (code or r.json()["error"]["code"] or r.json()["error"]["type"])
    assert row.requested_model == body["model"] and row.model_id is None and row.api_key_id == world["api_key"].pk
    assert upstream.requests == []


def test_limits_credentials_and_budget_refusals_are_recorded(gateway, upstream, world, tenant, settings):
    from tenants.services import tenant_update

    client = openai_client(gateway, world["key"])
    services.provider_update(actor=SYSTEM, provider=world["openai"], rpm=1)
    client.chat.completions.create(model="fast", messages=HI)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fast", messages=HI)
    services.provider_update(actor=SYSTEM, provider=world["openai"], rpm=None)
    settings.TENANT_CREDENTIALS_ENABLED = True  # strict: the tenant has no credential of its own
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="fast", messages=HI)
    settings.TENANT_CREDENTIALS_ENABLED = False
    tenant_update(actor=SYSTEM, tenant=tenant, monthly_budget=Decimal("0"))
    gateway.flush_usage()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fast", messages=HI)
    ok, *refused = rows_when(gateway, 4)
    assert ok.status == "ok"
    assert [(r.status, r.http_status, r.error_type) for r in refused] == [
        ("refused", 429, "rate_limited"), ("refused", 403, "credential_missing"), ("refused", 429, "budget_exceeded")]
    assert len(upstream.requests) == 1


def _too_many_messages(settings):
    settings.GATEWAY_MAX_MESSAGES, settings.GATEWAY_PARSE_IN_THREAD_BYTES = 3, 10
    return {"json": {"model": "fast", "messages": HI * 4}}


def _too_large(settings, chunked=False):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "x" * 3_000}]}).encode()
    return {"content": iter([body[:1000], body[1000:]]) if chunked else body,
            "headers": {"Content-Type": "application/json"}}


BEFORE_AUTH = {  # refusals answered before the handler authenticates the caller: (request, status, code, model)
    "invalid body": (lambda s: {"json": {"model": "fast", "messages": "hi"}}, 400, "invalid_value", "fast"),
    "not JSON": (lambda s: {"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400,
                 "invalid_request_error", ""),
    "not sent as JSON": (lambda s: {"content": b"model=fast", "headers": {"Content-Type": "text/plain"}}, 415,
                         "unsupported_media_type", ""),
    "too many messages": (_too_many_messages, 400, "invalid_value", "fast"),
    "too large": (_too_large, 413, "request_too_large", ""),
    "too large, chunked": (lambda s: _too_large(s, chunked=True), 413, "request_too_large", ""),
}


@pytest.mark.parametrize("case", BEFORE_AUTH)
def test_refusals_before_authentication_are_recorded_for_a_known_key(gateway, upstream, world, settings, case):
    make_request, status, code, model = BEFORE_AUTH[case]
    request = make_request(settings)
    headers = {**request.pop("headers", {}), **world["headers"]}
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=headers, **request)
    assert r.status_code == status, r.text
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.error_type, row.requested_model, row.endpoint) == \
        ("refused", status, code, model, "chat.completions")
    assert (row.tenant_id, row.api_key_id, row.tokens_in, row.cost) == \
        (world["api_key"].tenant_id, world["api_key"].pk, 0, Decimal(0))
    assert upstream.requests == []

    # the same requests with an unknown key, or none: refused alike, and nothing is recorded
    for bad in ({}, {"Authorization": "Bearer eneo_abc_def"}):
        request = make_request(settings)
        r = httpx.post(gateway.url + "/v1/chat/completions", headers={**request.pop("headers", {}), **bad},
                       **request)
        assert r.status_code == status, r.text
    assert len(rows_when(gateway, 1)) == 1


def test_a_key_without_the_gateway_scope_is_refused_and_recorded(gateway, upstream, world, tenant):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="reader", scopes=["aiProviders:ListAiProviders"])
    r = httpx.post(gateway.url + "/v1/embeddings", json={"model": "embed", "input": "hi"},
                   headers={"Authorization": f"Bearer {key.plaintext}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.error_type, row.endpoint, row.requested_model, row.api_key_id) == \
        ("refused", 403, "insufficient_scope", "embeddings", "embed", key.api_key.pk)


def test_unauthenticated_calls_leave_no_record(gateway, upstream, world):
    for headers in ({}, {"Authorization": "Bearer eneo_abc_def"}):
        r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "fast", "messages": HI}, headers=headers)
        assert r.status_code == 401
    assert rows_when(gateway, 0) == []


# --- upstream errors -------------------------------------------------------------------------------------------

def test_upstream_error_is_recorded_with_the_provider_called(gateway, upstream, world):
    upstream.set_fault("status", status=500)
    with pytest.raises(openai.APIStatusError):
        openai_client(gateway, world["key"]).chat.completions.create(model="fast", messages=HI)
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.error_type) == ("error", 502, "upstream_error")
    assert row.model_id == world["fast"].pk and row.provider_id == world["openai"].pk


def test_malformed_stream_ends_with_an_error_event_and_is_an_upstream_error(gateway, upstream, world):
    upstream.set_fault("malformed")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=world["headers"],
                      json={"model": "fast", "stream": True, "messages": HI}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and "data: [DONE]" not in lines
    error = json.loads(lines[-1][6:])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("api_error", "upstream_malformed")
    upstream.set_fault("malformed")
    with pytest.raises(openai.APIError):  # the official client sees it as an error too
        list(openai_client(gateway, world["key"]).chat.completions.create(model="fast", messages=HI, stream=True))
    for row in rows_when(gateway, 2):
        assert (row.status, row.http_status, row.error_type, row.streamed) == ("error", 502, "upstream_malformed", True)
        assert (row.tokens_out, row.cost) == (0, Decimal(0))


def test_malformed_answer_is_a_502_recorded_as_error(gateway, upstream, world):
    upstream.set_fault("malformed")
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "fast", "messages": HI},
                   headers=world["headers"])
    assert r.status_code == 502 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    [row] = rows_when(gateway, 1)
    assert (row.status, row.http_status, row.streamed) == ("error", 502, False)


def test_stream_broken_midway_counts_the_text_sent(gateway, upstream, world):
    upstream.set_fault("drop_stream")  # the connection ends after the role chunk and "Hello"
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=world["headers"],
                      json={"model": "fast", "stream": True, "messages": HI}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert "error" in json.loads(lines[-1][6:])
    [row] = rows_when(gateway, 1)
    assert (row.status, row.streamed, row.tokens_estimated) == ("error", True, True)
    assert (row.tokens_in, row.tokens_out) == (count(messages=HI), count("Hello")) and row.cost > 0


def test_token_estimates_never_fetch_a_tokenizer():
    """Models whose LiteLLM tokenizer would be downloaded (Llama...) are counted with the default encoding."""
    import asyncio

    from providers.gateway.usage import estimate_tokens

    started = time.monotonic()
    n = asyncio.run(estimate_tokens("meta-llama/Llama-3.1-8B-Instruct", text="Hello from fake upstream"))
    assert n == count(REPLY) and time.monotonic() - started < 1
    assert asyncio.run(estimate_tokens("gpt-4o-mini", messages=[{"role": "user", "content": "x" * 30_000}])) > 1000
