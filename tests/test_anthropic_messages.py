"""Anthropic's Messages API on the gateway (POST /v1/messages), end to end: the official anthropic client (and httpx)
-> our ASGI app (uvicorn) -> LiteLLM's Anthropic adapter -> the fake upstream, for providers of type anthropic,
openai (the Responses API), azure and hosted_vllm (chat completions)."""
import json

import anthropic
import httpx
import pytest

from credentials.services import credential_set
from providers.gateway.messages import anthropic_error_body
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import usage_rows
from .factories import make_model, make_provider, upstream_provider

REPLY = "Hello from fake upstream"
HI = [{"role": "user", "content": "hi there"}]
# the model named as asked -> (the upstream's path, the key it must get)
MODELS = {
    "anthropic/claude-3-5-haiku-20241022": ("/v1/messages", "ant-provider-key-0003"),
    "openai/gpt-4o-mini": ("/v1/chat/completions", "sk-provider-openai-0001"),
    "azure/gpt4o-deploy": ("/openai/deployments/gpt4o-deploy/chat/completions", "az-provider-key-0002"),
    "vllm": ("/v1/chat/completions", "vllm-acme-key-0004"),
}
ANTHROPIC_ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                         "rate_limit_error", "api_error", "timeout_error", "overloaded_error"}


@pytest.fixture
def world(gateway, upstream, tenant, other_tenant):
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    az = upstream_provider(upstream, "azure")
    make_model(az, model_id="gpt4o-deploy", alias="smart")
    an = upstream_provider(upstream, "anthropic")
    make_model(an, model_id="claude-3-5-haiku-20241022", alias="smart")
    own = make_provider(tenant=tenant, name="Acme vLLM", provider_type="hosted_vllm", base_url=upstream.url + "/v1",
                        api_key="vllm-acme-key-0004")
    make_model(own, model_id="acme-instruct", alias="vllm")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    other = api_key_create(actor=SYSTEM, tenant=other_tenant, name="bot", scopes=["gateway:Use"]).plaintext
    return {"key": key, "other_key": other}


def client(gateway, api_key=None, **kwargs) -> anthropic.Anthropic:
    """The official client: POST {base_url}/v1/messages with `x-api-key` (or `Authorization: Bearer`, auth_token)."""
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=15, **kwargs)


def post(gateway, world, body, **headers):
    return httpx.post(gateway.url + "/v1/messages", json=body, timeout=15,
                      headers={"x-api-key": world["key"], "anthropic-version": "2023-06-01", **headers})


def events(gateway, world, body) -> list[tuple[str, dict]]:
    """The SSE events of a streamed answer: (event name, data), after checking each is Anthropic's framing."""
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, timeout=15,
                      headers={"x-api-key": world["key"], "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    out = []
    for block in filter(None, text.split("\n\n")):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        out.append((name[7:], json.loads(data[6:])))
    return out


def assert_anthropic_error(exc: anthropic.APIStatusError, status: int, error_type: str):
    """Anthropic's error shape, at the status the gateway answers every /v1 endpoint's error with."""
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == error_type, body
    return body["error"]["message"]


# --- answers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", list(MODELS))
def test_message_from_every_provider_type(gateway, upstream, world, model):
    reply = client(gateway, world["key"]).messages.create(model=model, max_tokens=64, messages=HI)
    assert [block.type for block in reply.content] == ["text"] and reply.content[0].text == REPLY
    assert reply.model == model and reply.role == "assistant" and reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (2, 4)
    path, key = MODELS[model]
    assert [r["path"] for r in upstream.requests] == [path] and upstream.keys_seen() == [key]
    [row] = usage_rows(gateway)
    assert (row.status, row.endpoint, row.streamed, row.requested_model) == ("ok", "messages", False, model)
    assert (row.tokens_in, row.tokens_out, row.http_status) == (2, 4, 200)


@pytest.mark.parametrize("model", list(MODELS))
def test_streamed_message_from_every_provider_type(gateway, upstream, world, model):
    with client(gateway, world["key"]).messages.stream(model=model, max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY and final.content[0].text == REPLY
    assert final.model == model and final.stop_reason == "end_turn" and final.usage.output_tokens == 4
    path, key = MODELS[model]
    assert [r["path"] for r in upstream.requests] == [path] and upstream.keys_seen() == [key]
    assert upstream.last_request()["json"]["stream"] is True
    [row] = usage_rows(gateway)
    assert (row.status, row.endpoint, row.streamed, row.requested_model) == ("ok", "messages", True, model)
    assert (row.tokens_in, row.tokens_out, row.tokens_estimated) == (2, 4, False) and row.ttft_ms is not None


@pytest.mark.parametrize("model", ["anthropic/claude-3-5-haiku-20241022", "fast"])
def test_create_with_stream_true_sends_anthropics_events(gateway, upstream, world, model):
    got = events(gateway, world, {"model": model, "max_tokens": 64, "messages": HI, "stream": True})
    names = [name for name, _ in got]
    assert all(data["type"] == name for name, data in got)
    assert names[0] == "message_start" and names[-1] == "message_stop" and "error" not in names
    assert names[1] == "content_block_start" and names[-3:-1] == ["content_block_stop", "message_delta"]
    assert got[0][1]["message"]["model"] == model
    deltas = [data["delta"]["text"] for name, data in got if name == "content_block_delta"]
    assert "".join(deltas) == REPLY
    assert got[-2][1]["usage"]["output_tokens"] == 4 and got[-2][1]["delta"]["stop_reason"] == "end_turn"
    # the SDK's raw event stream reads the same
    stream = client(gateway, world["key"]).messages.create(model=model, max_tokens=64, messages=HI, stream=True)
    assert [event.type for event in stream][-1] == "message_stop"


def test_anthropic_provider_gets_the_request_as_sent(gateway, upstream, world):
    """Anthropic to Anthropic: system, tools, stop sequences and sampling go through as they are; metadata is accepted
    but not sent on; the upstream is asked for the model's own id."""
    tools = [{"name": "get_weather", "description": "The weather in a city.",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    client(gateway, world["key"]).messages.create(
        model="anthropic/claude-3-5-haiku-20241022", max_tokens=64, messages=HI, system="Be brief.", tools=tools,
        tool_choice={"type": "auto"}, stop_sequences=["END"], metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.2})
    sent = upstream.last_request()["json"]
    assert sent["model"] == "claude-3-5-haiku-20241022" and sent["max_tokens"] == 64 and sent["messages"] == HI
    assert sent["system"] == "Be brief." and sent["tools"] == tools and sent["tool_choice"] == {"type": "auto"}
    assert sent["stop_sequences"] == ["END"] and sent["temperature"] == 0.2 and "metadata" not in sent


def test_openai_provider_gets_the_conversation_in_its_format(gateway, upstream, world):
    client(gateway, world["key"]).messages.create(
        model="azure/gpt4o-deploy", max_tokens=64, system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}])
    sent = upstream.last_request()["json"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["max_tokens"] == 64 or sent.get("max_completion_tokens") == 64


def test_tenant_credentials_reach_their_upstream_and_no_other(gateway, upstream, world, tenant):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="anthropic", api_key="ant-acme-own-key-9999")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-acme-own-key-7777")
    mine = client(gateway, world["key"])
    for model in ("anthropic/claude-3-5-haiku-20241022", "openai/gpt-4o-mini"):
        with mine.messages.stream(model=model, max_tokens=8, messages=HI) as stream:
            assert "".join(stream.text_stream) == REPLY
    assert upstream.keys_seen() == ["ant-acme-own-key-9999", "sk-acme-own-key-7777"]
    upstream.reset()
    client(gateway, world["other_key"]).messages.create(model="anthropic/claude-3-5-haiku-20241022", max_tokens=8,
                                                        messages=HI)
    assert upstream.keys_seen() == ["ant-provider-key-0003"]


def test_alias_fails_over_to_the_next_model(gateway, upstream, world):
    upstream.set_fault("status", status=500, path_contains="/openai/deployments")
    reply = client(gateway, world["key"]).messages.create(model="smart", max_tokens=64, messages=HI)
    assert reply.content[0].text == REPLY and reply.model == "smart"
    assert [r["path"] for r in upstream.requests][-1] == "/v1/messages"


def test_streamed_alias_fails_over_before_anything_was_sent(gateway, upstream, world):
    upstream.set_fault("status", status=500, path_contains="/openai/deployments")
    with client(gateway, world["key"]).messages.stream(model="smart", max_tokens=64, messages=HI) as stream:
        assert "".join(stream.text_stream) == REPLY
    assert [r["path"] for r in upstream.requests][-1] == "/v1/messages"


# --- auth ----------------------------------------------------------------------------------------------------------

def test_x_api_key_and_bearer_both_authenticate(gateway, upstream, world):
    assert client(gateway, world["key"]).messages.create(model="fast", max_tokens=8, messages=HI).content
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=world["key"], max_retries=0, timeout=15)
    assert bearer.messages.create(model="fast", max_tokens=8, messages=HI).content


def test_bad_key_is_an_anthropic_authentication_error(gateway, upstream, world):
    with pytest.raises(anthropic.AuthenticationError) as exc:
        client(gateway, "eneo_not-a-real-key").messages.create(model="fast", max_tokens=8, messages=HI)
    assert_anthropic_error(exc.value, 401, "authentication_error")
    assert upstream.requests == []


def test_key_without_gateway_scope_is_a_permission_error(gateway, upstream, world, tenant):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="admin only", scopes=["providers:Read"]).plaintext
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        client(gateway, key).messages.create(model="fast", max_tokens=8, messages=HI)
    assert_anthropic_error(exc.value, 403, "permission_error")
    assert upstream.requests == []


# --- errors --------------------------------------------------------------------------------------------------------

def test_unknown_model_is_not_found(gateway, upstream, world):
    with pytest.raises(anthropic.NotFoundError) as exc:
        client(gateway, world["key"]).messages.create(model="no-such-model", max_tokens=8, messages=HI)
    message = assert_anthropic_error(exc.value, 404, "not_found_error")
    assert "no-such-model" in message and "fast" in message  # says what the caller may use
    [row] = usage_rows(gateway)
    assert (row.status, row.endpoint, row.http_status) == ("refused", "messages", 404)


def test_other_tenants_model_is_not_found(gateway, upstream, world):
    with pytest.raises(anthropic.NotFoundError):
        client(gateway, world["other_key"]).messages.create(model="vllm", max_tokens=8, messages=HI)
    assert upstream.requests == []


def test_embedding_model_cannot_serve_messages(gateway, upstream, world):
    with pytest.raises(anthropic.BadRequestError) as exc:
        client(gateway, world["key"]).messages.create(model="embed", max_tokens=8, messages=HI)
    assert "embedding" in assert_anthropic_error(exc.value, 400, "invalid_request_error")


@pytest.mark.parametrize("field,value", [("api_base", "http://127.0.0.2:9/v1"), ("api_key", "sk-mine"),
                                         ("extra_headers", {"x-api-key": "k"}), ("mock_response", "hi"),
                                         ("output_config", {"effort": "low"})])
def test_unknown_top_level_field_is_refused_naming_it(gateway, upstream, world, field, value):
    with pytest.raises(anthropic.BadRequestError) as exc:
        client(gateway, world["key"]).messages.create(model="fast", max_tokens=8, messages=HI,
                                                      extra_body={field: value})
    assert field in assert_anthropic_error(exc.value, 400, "invalid_request_error")
    assert upstream.requests == []


@pytest.mark.parametrize("body,named", [
    ({"model": "fast", "messages": HI}, "max_tokens"),
    ({"model": "fast", "max_tokens": 8, "messages": []}, "messages"),
    ({"model": "fast", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": "fast", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0]"),
    ({"model": "fast", "max_tokens": 8, "messages": HI, "tools": [
        {"type": "mcp", "name": "x", "server_url": "litellm_proxy", "input_schema": {"type": "object"}}]},
     "tools[0]"),
    ({"model": "fast", "max_tokens": 8, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 5}},
     "thinking.budget_tokens"),
])
def test_invalid_body_is_a_400_naming_the_field(gateway, upstream, world, body, named):
    r = post(gateway, world, body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert named in r.json()["error"]["message"]
    assert upstream.requests == []


def test_upstream_failure_is_an_anthropic_api_error_and_recorded(gateway, upstream, world):
    upstream.set_fault("status", status=500)
    with pytest.raises(anthropic.InternalServerError) as exc:
        client(gateway, world["key"]).messages.create(model="anthropic/claude-3-5-haiku-20241022", max_tokens=8,
                                                      messages=HI)
    message = assert_anthropic_error(exc.value, 502, "api_error")
    assert "ant-provider-key-0003" not in exc.value.response.text
    assert "litellm" not in message and "Exception" not in message  # never a library's class name
    [row] = usage_rows(gateway)
    assert (row.status, row.http_status, row.endpoint, row.streamed) == ("error", 502, "messages", False)


def test_upstream_rate_limit_is_a_rate_limit_error_with_retry_after(gateway, upstream, world):
    upstream.set_fault("status", status=429, retry_after=7)
    with pytest.raises(anthropic.RateLimitError) as exc:
        client(gateway, world["key"]).messages.create(model="fast", max_tokens=8, messages=HI)
    assert_anthropic_error(exc.value, 429, "rate_limit_error")
    assert exc.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("model", ["anthropic/claude-3-5-haiku-20241022", "azure/gpt4o-deploy", "fast"])
def test_stream_dropped_midway_ends_with_an_anthropic_error_event(gateway, upstream, world, model):
    upstream.set_fault("drop_stream")
    got = events(gateway, world, {"model": model, "max_tokens": 64, "messages": HI, "stream": True})
    name, data = got[-1]
    assert name == "error" and set(data) == {"type", "error"} and data["type"] == "error"
    assert data["error"]["type"] in ANTHROPIC_ERROR_TYPES and data["error"]["message"]
    assert "litellm" not in data["error"]["message"] and "Exception" not in data["error"]["message"]
    assert "message_stop" not in [name for name, _ in got]
    [row] = usage_rows(gateway)
    assert (row.status, row.streamed, row.endpoint) == ("error", True, "messages")


@pytest.mark.parametrize("model", ["anthropic/claude-3-5-haiku-20241022", "azure/gpt4o-deploy"])
def test_stream_closed_by_the_client_counts_what_was_delivered(gateway, upstream, world, model):
    upstream.set_latency(2000, spread_stream=True)  # 11 events, one every 180 ms
    try:
        pieces = []
        with httpx.stream("POST", gateway.url + "/v1/messages", headers={"x-api-key": world["key"]}, timeout=10,
                          json={"model": model, "max_tokens": 64, "messages": HI, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and (data := json.loads(line[6:]))["type"] == "content_block_delta":
                    pieces.append(data["delta"]["text"])
                if len(pieces) == 2:  # "Hello", " from": then the client leaves, before message_delta
                    break
    finally:
        upstream.set_latency(0, spread_stream=False)
    [row] = usage_rows(gateway)
    assert (row.status, row.http_status, row.streamed, row.tokens_estimated) == ("client_closed", 499, True, True)
    assert row.tokens_in > 0 and 0 < row.tokens_out < 4  # the prompt, and what was sent (not the whole answer)


def test_stream_error_event_raises_in_the_sdk(gateway, upstream, world):
    upstream.set_fault("drop_stream")
    with pytest.raises(anthropic.APIStatusError):
        with client(gateway, world["key"]).messages.stream(model="anthropic/claude-3-5-haiku-20241022",
                                                           max_tokens=64, messages=HI) as stream:
            "".join(stream.text_stream)


# --- the error shape -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status,code,error_type", [
    (400, "unknown_parameter", "invalid_request_error"), (401, "invalid_api_key", "authentication_error"),
    (403, "model_not_allowed", "permission_error"), (404, "model_not_found", "not_found_error"),
    (413, "request_too_large", "invalid_request_error"), (415, "unsupported_media_type", "invalid_request_error"),
    (429, "rate_limited", "rate_limit_error"), (429, "budget_exceeded", "rate_limit_error"),
    (500, None, "api_error"), (502, "upstream_error", "api_error"), (503, "provider_paused", "overloaded_error"),
    (503, "credential_undecryptable", "api_error"), (504, "upstream_timeout", "timeout_error"),
])
def test_anthropic_error_body_maps_every_gateway_error(status, code, error_type):
    openai_body = {"error": {"message": "What went wrong.", "type": "whatever", "param": "x", "code": code}}
    assert anthropic_error_body(status, openai_body) == {"type": "error", "error": {"type": error_type,
                                                                                    "message": "What went wrong."}}
