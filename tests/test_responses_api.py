"""POST /v1/responses (OpenAI's Responses API) end to end: the official openai client and httpx -> our ASGI app
(uvicorn) -> LiteLLM -> the fake upstream. OpenAI and vLLM providers are called on their own /v1/responses; Anthropic
through LiteLLM's bridge to chat completions (/v1/messages). Every JSON answer and every SSE event is validated
against OpenAI's OpenAPI document; every call leaves one usage record."""
import json

import httpx
import openai
import pytest

from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import openai_client, usage_rows
from .factories import make_model, make_provider, upstream_provider
from .openai_spec import assert_answer, assert_stream

REPLY = "Hello from fake upstream"
MODELS = ["fast", "openai/gpt-4o-mini", "azure/gpt4o-deploy", "anthropic/claude-3-5-haiku-20241022", "llama"]
UPSTREAM_PATH = {"fast": "/v1/responses", "openai/gpt-4o-mini": "/v1/responses",
                 "azure/gpt4o-deploy": "/openai/responses",
                 "anthropic/claude-3-5-haiku-20241022": "/v1/messages", "llama": "/v1/responses"}


@pytest.fixture
def world(gateway, upstream, tenant, other_tenant):
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    an = upstream_provider(upstream, "anthropic")
    make_model(an, model_id="claude-3-5-haiku-20241022")
    az = upstream_provider(upstream, "azure", api_version="2025-03-01-preview")  # Responses: 2025-03 and later
    make_model(az, model_id="gpt4o-deploy")
    # (a model id without a HuggingFace tokenizer in LiteLLM: it counts the tokens of a faked stream with one, which
    # it would try to download)
    own = make_provider(tenant=tenant, name="Acme vLLM", provider_type="hosted_vllm",
                        base_url=upstream.url + "/v1", api_key="vllm-acme-key-0004")
    make_model(own, model_id="acme-instruct", alias="llama")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    other = api_key_create(actor=SYSTEM, tenant=other_tenant, name="bot", scopes=["gateway:Use"]).plaintext
    return {"key": key, "other_key": other, "headers": {"Authorization": f"Bearer {key}"}}


def post(gateway, world, body, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else world["headers"]
    return httpx.post(gateway.url + "/v1/responses", json=body, headers=headers, timeout=15)


def stream_events(gateway, world, body) -> list[dict]:
    """The events of a streamed answer, each checked for OpenAI's framing: `event: <type>` then `data: <json>`."""
    with httpx.stream("POST", gateway.url + "/v1/responses", json={**body, "stream": True},
                      headers=world["headers"], timeout=15) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        events.append(data)
    assert "[DONE]" not in text
    return events


# --- answers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_answer_conforms_names_the_model_and_is_recorded(gateway, upstream, world, model):
    client = openai_client(gateway, world["key"])
    raw = client.responses.with_raw_response.create(model=model, input="hi there", instructions="Be brief.")
    body = raw.http_response.json()
    assert_answer("responses", body)
    assert body["model"] == model and body["status"] == "completed"
    assert body["store"] is False and body["instructions"] in ("Be brief.", None)
    answer = raw.parse()
    assert answer.output_text == REPLY
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens == 4
    assert upstream.last_request()["path"] == UPSTREAM_PATH[model]
    [row] = usage_rows(gateway)
    assert (row.status, row.endpoint, row.streamed, row.requested_model) == ("ok", "responses", False, model)
    assert (row.tokens_in, row.tokens_out) == (answer.usage.input_tokens, 4) and not row.tokens_estimated


@pytest.mark.parametrize("model", MODELS)
def test_every_stream_event_conforms(gateway, upstream, world, model):
    events = stream_events(gateway, world, {"model": model, "input": [{"role": "user", "content": "hi there"}]})
    assert_stream("responses", events)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert {e["response"]["model"] for e in events if "response" in e} == {model}
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == REPLY
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == REPLY and final["store"] is False
    [row] = usage_rows(gateway)
    assert (row.status, row.endpoint, row.streamed, row.requested_model) == ("ok", "responses", True, model)
    assert row.tokens_in == final["usage"]["input_tokens"] > 0 and row.tokens_out == 4
    assert not row.tokens_estimated and row.ttft_ms is not None


@pytest.mark.parametrize("model", MODELS)
def test_official_client_streams(gateway, upstream, world, model):
    client = openai_client(gateway, world["key"])
    deltas = [e.delta for e in client.responses.create(model=model, input="hi there", stream=True)
              if e.type == "response.output_text.delta"]
    assert "".join(deltas) == REPLY
    with client.responses.stream(model=model, input="hi there") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == REPLY and final.model == model
    rows = usage_rows(gateway, 2)
    assert [(r.status, r.streamed, r.tokens_out) for r in rows] == [("ok", True, 4)] * 2


def test_provider_key_store_false_and_function_tools_reach_the_upstream(gateway, upstream, world):
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "strict": False}
    r = post(gateway, world, {"model": "fast", "input": "hi there", "tools": [tool], "store": False,
                              "tool_choice": {"type": "function", "name": "get_weather"}})
    assert r.status_code == 200, r.text
    assert_answer("responses", r.json())
    sent = upstream.last_request()
    assert upstream.keys_seen() == ["sk-provider-openai-0001"]
    assert sent["json"]["store"] is False and sent["json"]["model"] == "gpt-4o-mini"
    assert sent["json"]["tools"][0]["name"] == "get_weather"
    r = post(gateway, world, {"model": "llama", "input": "hi", "previous_response_id": None, "conversation": None,
                              "background": False})  # what is refused, unset
    assert r.status_code == 200, r.text
    assert upstream.keys_seen()[-1] == "vllm-acme-key-0004"
    assert upstream.last_request()["json"]["store"] is False  # OpenAI's default would keep it


# --- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,status,code,param", [
    ({"model": "no-such-model"}, 404, "model_not_found", "model"),
    ({"model": "embed"}, 400, "model_type_mismatch", "model"),
    ({"api_base": "http://127.0.0.1:1"}, 400, "unknown_parameter", "api_base"),
    ({"input": ""}, 400, "invalid_value", "input"),
    ({"previous_response_id": "resp_abc"}, 400, "unsupported_parameter", "previous_response_id"),
    ({"conversation": "conv_abc"}, 400, "unsupported_parameter", "conversation"),
    ({"store": True}, 400, "unsupported_parameter", "store"),
    ({"background": True}, 400, "unsupported_parameter", "background"),
    ({"prompt": {"id": "pmpt_abc"}}, 400, "unsupported_parameter", "prompt"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False},
                {"type": "web_search"}]}, 400, "unsupported_parameter",
     "tools[1].type"),
    ({"tool_choice": {"type": "file_search"}}, 400, "unsupported_parameter", "tool_choice.type"),
])
def test_refused_calls_are_openai_shaped_and_recorded(gateway, upstream, world, extra, status, code, param):
    r = post(gateway, world, {"model": "fast", "input": "hi there", **extra})
    assert r.status_code == status, r.text
    assert_answer("error", r.json())
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)
    assert "litellm" not in r.text.lower()
    assert upstream.requests == []
    [row] = usage_rows(gateway)
    assert (row.status, row.http_status, row.endpoint, row.error_type) == ("refused", status, "responses", code)


def test_refused_with_the_official_client(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="fast", input="hi", previous_response_id="resp_123")
    assert caught.value.body["param"] == "previous_response_id"
    assert "conversation state" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-5-unknown", input="hi")


def test_auth_and_tenant_permissions(gateway, upstream, world):
    r = httpx.post(gateway.url + "/v1/responses", json={"model": "fast", "input": "hi"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = post(gateway, world, {"model": "llama", "input": "hi"}, key=world["other_key"])  # another tenant's model
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    hidden = make_provider(tenant=None, name="Private", base_url=upstream.url + "/v1")
    make_model(hidden, model_id="private-model")
    r = post(gateway, world, {"model": "private-model", "input": "hi"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert upstream.requests == []


# --- upstream failures ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_is_a_502_and_recorded(gateway, upstream, world, stream):
    upstream.set_fault("status", status=500)
    r = post(gateway, world, {"model": "fast", "input": "hi there", "stream": stream})
    assert r.status_code == 502, r.text
    assert_answer("error", r.json())
    assert r.json()["error"]["code"] == "upstream_error" and "sk-provider" not in r.text
    [row] = usage_rows(gateway)
    assert (row.status, row.http_status, row.streamed, row.endpoint) == ("error", 502, stream, "responses")


def test_stream_dropped_midway_ends_with_an_error_event(gateway, upstream, world):
    upstream.set_fault("drop_stream")
    events = stream_events(gateway, world, {"model": "fast", "input": "hi there"})
    assert_stream("responses", events)
    assert events[-1]["type"] == "error" and events[-1]["sequence_number"] == len(events) - 1
    [row] = usage_rows(gateway)
    assert (row.status, row.streamed) == ("error", True)


def test_a_stream_the_provider_reports_failed_is_recorded_as_an_error():
    """response.failed is relayed to the client as OpenAI sends it, and the ledger records an upstream error."""
    from providers.gateway.responses import ResponsesStream

    reader = ResponsesStream({"model": "fast", "input": "hi"}, "fast")
    failed = {"type": "response.failed", "response": {
        "id": "resp_1", "object": "response", "created_at": 1, "status": "failed", "model": "gpt-4o-mini",
        "output": [], "error": {"code": "server_error", "message": "The model failed."}}}
    event = reader.frame(failed)
    assert event.startswith(b"event: response.failed\n") and b'"model":"fast"' in event
    assert reader.failed == "server_error"
