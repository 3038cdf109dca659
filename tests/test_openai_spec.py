"""/v1 speaks OpenAI's API exactly: every JSON answer and every SSE event validated against the schemas of OpenAI's
OpenAPI document (tests/openai-openapi.json.gz), for OpenAI, Azure and Anthropic providers on the fake upstream;
errors in OpenAI's shape everywhere (405 and unknown paths too); X-Request-Id on every answer; CORS only for the
origins an operator allowed; one name per model across /v1/models, answers and errors.

Live: httpx and the official openai client -> our ASGI app (uvicorn) -> LiteLLM -> the fake upstream."""
import httpx
import openai
import pytest

from providers.models import UsageRecord
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import openai_client
from .factories import make_model, make_provider, upstream_provider
from .openai_spec import assert_answer, assert_stream, sse_events

HI = [{"role": "user", "content": "hi there"}]
CHAT_MODELS = ["fast", "openai/gpt-4o-mini", "azure/gpt4o-deploy", "anthropic/claude-3-5-haiku-20241022"]


@pytest.fixture
def world(gateway, upstream, tenant):
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    az = upstream_provider(upstream, "azure")
    make_model(az, model_id="gpt4o-deploy")
    make_model(az, model_id="embed-deploy", model_type="embedding")
    an = upstream_provider(upstream, "anthropic")
    make_model(an, model_id="claude-3-5-haiku-20241022")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"])
    return {"key": key.plaintext, "api_key": key.api_key, "headers": {"Authorization": f"Bearer {key.plaintext}"}}


def post(gateway, world, path, body, **headers):
    return httpx.post(gateway.url + path, json=body, headers={**world["headers"], **headers}, timeout=15)


def stream_lines(gateway, world, path, body) -> list[str]:
    with httpx.stream("POST", gateway.url + path, json=body, headers=world["headers"], timeout=15) as r:
        assert r.status_code == 200, r.read()
        return [line for line in r.iter_lines() if line]


# --- answers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_answer_conforms_and_names_the_model_as_asked(gateway, upstream, world, model):
    r = post(gateway, world, "/v1/chat/completions", {"model": model, "messages": HI})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_answer("chat.completions", body)
    assert body["model"] == model and "provider_specific_fields" not in r.text  # nothing of LiteLLM's own
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello from fake upstream" and message["refusal"] is None
    assert body["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("include_usage", [False, True])
def test_every_stream_event_conforms(gateway, upstream, world, model, include_usage):
    lines = stream_lines(gateway, world, "/v1/chat/completions", {
        "model": model, "messages": HI, "stream": True, "stream_options": {"include_usage": include_usage}})
    assert lines[-1] == "data: [DONE]"
    events = sse_events(lines)
    assert_stream("chat.completions", events)
    assert {e["model"] for e in events} == {model}
    assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]) == \
        "Hello from fake upstream"
    finals = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"] is not None]
    assert finals == ["stop"]
    assert [bool(e.get("usage")) for e in events if not e["choices"]] == ([True] if include_usage else [])


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("model", ["fast", "azure/gpt4o-deploy"])
def test_tool_calls_round_trip_with_the_official_client(gateway, upstream, world, model):
    client = openai_client(gateway, world["key"])
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=model, messages=asked, tools=[WEATHER])
    assert_answer("chat.completions", first.model_dump(exclude_unset=True))
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert upstream.last_request()["json"]["tools"] == [WEATHER]

    followed = asked + [choice.message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    second = client.chat.completions.create(model=model, messages=followed, tools=[WEATHER])
    assert second.choices[0].message.content == "Hello from fake upstream"

    lines = stream_lines(gateway, world, "/v1/chat/completions",
                         {"model": model, "messages": asked, "tools": [WEATHER], "stream": True})
    events = sse_events(lines)
    assert_stream("chat.completions", events)
    pieces = [t for e in events for c in e["choices"] for t in c["delta"].get("tool_calls") or ()]
    assert pieces[0]["function"]["name"] == "get_weather"
    assert "".join(p["function"].get("arguments") or "" for p in pieces) == '{"city": "Paris"}'
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["tool_calls"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completion_answer_conforms(gateway, upstream, world, model):
    r = post(gateway, world, "/v1/completions", {"model": model, "prompt": "Say hello", "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert_answer("completions", r.json())
    assert r.json()["model"] == model and r.json()["choices"][0]["text"] == "Hello from fake upstream"


def test_embeddings_and_model_list_conform(gateway, upstream, world):
    for model in ("embed", "azure/embed-deploy"):
        r = post(gateway, world, "/v1/embeddings", {"model": model, "input": ["one", "two"]})
        assert r.status_code == 200, r.text
        assert_answer("embeddings", r.json())
        assert r.json()["model"] == model
    listed = httpx.get(gateway.url + "/v1/models", headers=world["headers"]).json()
    assert_answer("models", listed)
    for entry in listed["data"]:
        assert_answer("model", entry)


def test_models_retrieve_with_the_official_client(gateway, upstream, world):
    client = openai_client(gateway, world["key"])
    names = {m.id for m in client.models.list()}
    assert {"fast", "openai/gpt-4o-mini", "azure/gpt4o-deploy", "anthropic/claude-3-5-haiku-20241022"} <= names
    for name in ("fast", "openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022"):
        model = client.models.retrieve(name)
        assert (model.id, model.object) == (name, "model")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-5-unknown")
    assert caught.value.body["code"] == "model_not_found"


def test_errors_name_models_as_the_model_list_does(gateway, upstream, world, tenant):
    hidden = make_provider(tenant=None, name="Hidden", base_url=upstream.url + "/v1")
    make_model(hidden, model_id="secret-model")
    r = post(gateway, world, "/v1/chat/completions", {"model": "nope", "messages": HI})
    assert r.status_code == 404
    listed = {m["id"] for m in httpx.get(gateway.url + "/v1/models", headers=world["headers"]).json()["data"]}
    message = r.json()["error"]["message"]
    named = message.split("Available: ", 1)[1].split(". GET", 1)[0].split(", ")
    assert set(named) <= listed and "openai/gpt-4o-mini" not in named  # one name per model: the alias
    assert "azure/gpt4o-deploy" in named and "secret-model" not in message


# --- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,body,auth,status,code", [
    ("POST", "/v1/chat/completions", {"model": "fast", "messages": "hi"}, True, 400, "invalid_value"),
    ("POST", "/v1/chat/completions", {"model": "fast", "messages": HI, "api_base": "x"}, True, 400,
     "unknown_parameter"),
    ("POST", "/v1/chat/completions", {"model": "fast", "messages": HI}, False, 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": HI}, True, 404, "model_not_found"),
    ("GET", "/v1/chat/completions", None, True, 405, "method_not_allowed"),
    ("DELETE", "/v1/models", None, True, 405, "method_not_allowed"),
    ("GET", "/v1/no/such/endpoint", None, True, 404, "unknown_endpoint"),
])
def test_every_error_is_openai_shaped(gateway, upstream, world, method, path, body, auth, status, code):
    r = httpx.request(method, gateway.url + path, json=body, headers=world["headers"] if auth else {})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert_answer("error", r.json())
    assert r.json()["error"]["code"] == code
    if status == 405:
        assert r.headers["Allow"] and method not in r.headers["Allow"]


def test_upstream_failures_are_described_without_library_names(gateway, upstream, world):
    for fault in ({"status": 500}, {"status": 400}, {"status": 401}):
        upstream.set_fault("status", **fault)
        r = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI})
        assert_answer("error", r.json())
        message = r.json()["error"]["message"]
        for internal in ("litellm", "LiteLLM", "Exception", "OpenAIException", "Error:", "Traceback"):
            assert internal not in message, message
        upstream.clear_faults()


# --- X-Request-Id -----------------------------------------------------------------------------------------------

def test_every_answer_has_a_request_id_stored_on_its_usage_record(gateway, upstream, world):
    ok = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI})
    mine = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI},
                **{"X-Request-Id": "trace-4711.a"})
    refused = post(gateway, world, "/v1/chat/completions", {"model": "nope", "messages": HI})
    odd = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI},
               **{"X-Request-Id": "bad id\twith spaces"})
    unauthenticated = httpx.get(gateway.url + "/v1/models")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=world["headers"],
                      json={"model": "fast", "messages": HI, "stream": True}) as streamed:
        streamed.read()
    generated = [ok, refused, odd, unauthenticated, streamed]
    ids = [r.headers["X-Request-Id"] for r in generated]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)
    assert mine.headers["X-Request-Id"] == "trace-4711.a"

    gateway.flush_usage()
    stored = dict(UsageRecord.objects.values_list("request_id", "status"))
    assert stored == {ok.headers["X-Request-Id"]: "ok", "trace-4711.a": "ok",
                      refused.headers["X-Request-Id"]: "refused", odd.headers["X-Request-Id"]: "ok",
                      streamed.headers["X-Request-Id"]: "ok"}


def test_request_id_is_in_the_gateway_log_lines(gateway, upstream, world):
    """The console handler's filters and format (settings.LOGGING) put the request's id into every line."""
    import io
    import logging

    console = next(h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(console.formatter)
    for f in console.filters:
        handler.addFilter(f)
    logger = logging.getLogger("eneo.gateway")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        upstream.set_fault("status", status=500)
        r = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI},
                 **{"X-Request-Id": "find-me-42"})
        assert r.status_code == 502
    finally:
        logger.removeHandler(handler)
        logger.level = level
    assert any("[find-me-42]" in line and "failed" in line for line in lines.getvalue().splitlines()), \
        lines.getvalue()


# --- CORS -------------------------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}


def test_cors_is_off_by_default(gateway, upstream, world):
    r = httpx.options(gateway.url + "/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    assert_answer("error", r.json())
    r = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI}, Origin=PREFLIGHT["Origin"])
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_cors_for_the_origins_an_operator_allowed(gateway, upstream, world, settings):
    settings.GATEWAY_CORS_ORIGINS = ["https://app.example.org"]
    r = httpx.options(gateway.url + "/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "x-stainless-os" in r.headers["Access-Control-Allow-Headers"]
    r = post(gateway, world, "/v1/chat/completions", {"model": "fast", "messages": HI}, Origin=PREFLIGHT["Origin"])
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
    other = httpx.options(gateway.url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.test"})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers
