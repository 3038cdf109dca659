"""/v1 accepts only the fields of OpenAI's public API schema, each validated: nothing in a request body picks an
endpoint, a key, a header, a transport or a model the tenant may not use (issue 9, findings 1 and 8)."""
import gzip
import inspect
import json
from pathlib import Path

import httpx
import pytest

from providers.gateway.request_schema import SCHEMA_FILE, extract, request_fields, routing_keys
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .factories import make_model, upstream_provider

SPEC = Path(__file__).with_name("openai-openapi.json.gz")
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
EMBED = {"model": "embed", "input": "hi"}
# every /v1 endpoint that takes a body: (endpoint, a minimal valid body)
ENDPOINTS = {
    "/v1/chat/completions": ("chat.completions", CHAT),
    "/v1/embeddings": ("embeddings", EMBED),
    "/v1/completions": ("completions", {"model": "fast", "prompt": "hi"}),
    "/v1/responses": ("responses", {"model": "fast", "input": "hi"}),
    "/v1/rerank": ("rerank", {"model": "fast", "query": "q", "documents": ["a"]}),
    "/v1/messages": ("messages", {"model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.fixture
def world(gateway, upstream, attacker, tenant):
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="gpt-4o")  # instance-level, not enabled for the tenant: a fallback must not reach it
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    return {"key": key, "headers": {"Authorization": f"Bearer {key}"}}


def post(gateway, world, path, body):
    # json.dumps escapes what httpx's encoder refuses (a lone surrogate becomes \ud800, as a hostile client sends it)
    return httpx.post(gateway.url + path, content=json.dumps(body).encode(), timeout=15,
                      headers={**world["headers"], "Content-Type": "application/json"})


def litellm_parameters() -> set[str]:
    """Every keyword argument LiteLLM's completion and embedding accept, from LiteLLM's own lists."""
    import litellm
    from litellm.types.utils import all_litellm_params

    names = set(all_litellm_params)
    for fn in (litellm.completion, litellm.acompletion, litellm.embedding, litellm.aembedding,
               litellm.text_completion, litellm.atext_completion, litellm.responses, litellm.aresponses,
               litellm.rerank, litellm.arerank, litellm.anthropic_messages):
        names |= {p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def test_vendored_schema_extract_matches_the_spec():
    with gzip.open(SPEC) as fh:
        assert extract(json.load(fh)) == json.loads(SCHEMA_FILE.read_text())


def test_every_litellm_parameter_outside_the_api_is_refused(gateway, upstream, attacker, world):
    evil = attacker.url + "/v1"
    checked = 0
    client = httpx.Client(base_url=gateway.url, headers=world["headers"], timeout=15)
    for path, (endpoint, base) in ENDPOINTS.items():
        public = request_fields(endpoint)
        for name in sorted(litellm_parameters() - public):
            r = client.post(path, json={**base, name: evil})
            assert r.status_code == 400, (path, name, r.text)
            error = r.json()["error"]
            if endpoint == "messages":  # Anthropic's error shape: no param or code; the message names the field
                assert error["type"] == "invalid_request_error" and f"supplied: {name}." in error["message"], error
            else:
                assert (error["param"], error["code"], error["type"]) == (name, "unknown_parameter",
                                                                           "invalid_request_error"), (name, error)
            checked += 1
    assert checked > 2000  # LiteLLM 1.108 has ~400 parameters beyond the public APIs, per endpoint
    assert upstream.requests == [] and attacker.requests == []


def test_fallbacks_cannot_send_the_key_elsewhere_or_reach_other_models(gateway, upstream, attacker, world):
    body = {**CHAT, "fallbacks": [{"model": "openai/gpt-4o", "api_base": attacker.url + "/v1",
                                   "api_key": "sk-whatever"}]}
    upstream.set_fault("status", status=500)  # the primary fails: a fallback would be tried now
    r = post(gateway, world, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "fallbacks"
    assert attacker.requests == [] and upstream.requests == []


@pytest.mark.parametrize("extra, param", [
    ({"stream": True, "stream_options": "yes"}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "maybe"}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "\ud800 lone surrogate"}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
    ({"messages": "not a list"}, "messages"),
    ({"temperature": "hot"}, "temperature"),
    ({"n": "two"}, "n"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"metadata": {"a": {"nested": 1}}}, "metadata"),
])
def test_invalid_values_are_400_naming_the_field(gateway, upstream, world, extra, param):
    r = post(gateway, world, "/v1/chat/completions", {**CHAT, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert "litellm" not in error["message"].lower() and "Traceback" not in error["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("name, value", [("extra_body", "x"), ("headers", "x"), ("client", "x"),
                                         ("extra_headers", {"Authorization": "Bearer x"}), ("api_key", "x")])
def test_transport_fields_as_strings_are_400_not_5xx(gateway, upstream, world, name, value):
    r = post(gateway, world, "/v1/chat/completions", {**CHAT, name: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == name
    r = post(gateway, world, "/v1/embeddings", {**EMBED, name: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == name


def test_every_public_field_is_accepted(gateway, upstream, world):
    """The positive control: real OpenAI parameters pass and reach the provider as sent."""
    body = {**CHAT, "temperature": 0.2, "top_p": 0.9, "max_tokens": 5, "seed": 3, "user": "u-1",
            "stop": ["\n\n"], "presence_penalty": 0.1, "metadata": {"team": "a"},
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=world["headers"], json=body) as r:
        assert r.status_code == 200
        assert "data: [DONE]" in list(r.iter_lines())
    sent = upstream.last_request()["json"]
    assert (sent["temperature"], sent["seed"], sent["max_tokens"], sent["user"]) == (0.2, 3, 5, "u-1")
    assert "metadata" not in sent  # accepted per the API, not handed to LiteLLM (which reads it for itself)
    r = post(gateway, world, "/v1/embeddings", {**EMBED, "dimensions": 8, "encoding_format": "float"})
    assert r.status_code == 200, r.text


def test_routing_keys_cover_litellm_transport_arguments():
    for name in ("api_base", "base_url", "api_key", "extra_headers", "headers", "client", "fallbacks",
                 "custom_llm_provider", "mock_response", "extra_body", "timeout", "metadata"):
        assert name in routing_keys() or name in request_fields("chat.completions"), name
    assert not ({"temperature", "max_tokens", "messages"} & routing_keys())
