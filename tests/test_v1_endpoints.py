"""/v1/completions and /v1/rerank, and parameters a model cannot honour: refused by name unless the model is set
to drop them. Live: the official openai client or httpx -> our ASGI app (uvicorn) -> LiteLLM -> the fake upstream;
every OpenAI answer and event validated against OpenAI's spec."""
import httpx
import openai
import pytest

from providers import services
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import openai_client, usage_rows
from .factories import make_model, make_provider, upstream_provider
from .openai_spec import assert_answer, assert_conforms, sse_events

REPLY = "Hello from fake upstream"
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def world(gateway, upstream, tenant):
    oa = upstream_provider(upstream, "openai")
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="gpt-3.5-turbo-instruct", alias="instruct")
    an = upstream_provider(upstream, "anthropic")
    claude = make_model(an, model_id="claude-3-5-haiku-20241022", alias="claude")
    co = make_provider(tenant=None, instance_wide=True, name="Cohere", provider_type="cohere", base_url=upstream.url,
                       api_key="co-provider-key-0004")
    make_model(co, model_id="rerank-english-v3.0", model_type="rerank", alias="ranker")
    vllm = make_provider(tenant=None, instance_wide=True, name="vLLM", provider_type="hosted_vllm",
                         base_url=upstream.url + "/v1", api_key="vllm-provider-key-0005")
    make_model(vllm, model_id="BAAI/bge-reranker-v2-m3", model_type="rerank", alias="bge")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"])
    return {"key": key.plaintext, "headers": {"Authorization": f"Bearer {key.plaintext}"}, "claude": claude}


# --- /v1/completions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,path", [("instruct", "/v1/completions"), ("fast", "/v1/chat/completions"),
                                        ("claude", "/v1/messages")])
def test_completions_with_the_official_client(gateway, upstream, world, model, path):
    """A completion model is called on its provider's completions endpoint; chat models (any provider) answer
    through LiteLLM's bridge to their chat API."""
    client = openai_client(gateway, world["key"])
    answer = client.completions.create(model=model, prompt="Say hello", max_tokens=8)
    assert answer.choices[0].text == REPLY and answer.model == model
    assert_answer("completions", answer.model_dump(exclude_unset=True))
    assert upstream.last_request()["path"] == path
    [row] = usage_rows(gateway)
    assert (row.endpoint, row.status, row.requested_model, row.streamed) == ("completions", "ok", model, False)
    assert row.tokens_in > 0 and row.tokens_out > 0


def test_completions_stream_conforms_and_is_counted(gateway, upstream, world):
    with httpx.stream("POST", gateway.url + "/v1/completions", headers=world["headers"],
                      json={"model": "fast", "prompt": "Say hello", "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    events = sse_events(lines)
    for event in events:
        # the spec gives a completion's chunk no nullable finish_reason although OpenAI streams null before the
        # last chunk: everything else of each chunk is checked
        checked = {**event, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"}
                                        for c in event["choices"]]}
        assert_conforms("CreateCompletionResponse", checked)
    assert "".join(c["text"] for e in events for c in e["choices"]) == REPLY
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    [row] = usage_rows(gateway)
    assert (row.endpoint, row.status, row.streamed, row.tokens_estimated) == ("completions", "ok", True, False)


def test_completions_refusals_are_openai_shaped(gateway, upstream, world):
    for body, status, code in (({"model": "fast", "prompt": ""}, 400, "invalid_value"),
                               ({"model": "fast", "prompt": "x", "api_base": "http://evil"}, 400,
                                "unknown_parameter"),
                               ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
                               ({"model": "fast", "prompt": [[1, 2, 3]]}, 400, "unsupported_parameter"),
                               ({"model": "fast", "prompt": [[False]]}, 400, "invalid_value")):
        r = httpx.post(gateway.url + "/v1/completions", json=body, headers=world["headers"])
        assert r.status_code == status, r.text
        assert_answer("error", r.json())
        assert r.json()["error"]["code"] == code
    assert upstream.requests == []


# --- /v1/rerank -------------------------------------------------------------------------------------------------

DOCS = ["The capital of France is Paris.", "Bananas are yellow.", "Paris is a city in France."]


@pytest.mark.parametrize("model,path", [("ranker", "/v2/rerank"), ("bge", "/v1/rerank")])
def test_rerank_cohere_format(gateway, upstream, world, model, path):
    r = httpx.post(gateway.url + "/v1/rerank", headers=world["headers"],
                   json={"model": model, "query": "capital of France", "documents": DOCS, "top_n": 2,
                         "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and len(body["results"]) == 2
    assert [x["index"] for x in body["results"]] == [0, 2]
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["results"][0]["document"]["text"] == DOCS[0]
    assert upstream.last_request()["path"] == path
    assert upstream.last_request()["json"]["query"] == "capital of France"
    [row] = usage_rows(gateway)
    assert (row.endpoint, row.status, row.requested_model) == ("rerank", "ok", model)


def test_rerank_refusals(gateway, upstream, world):
    for body, status, param in (({"model": "ranker", "query": "q", "documents": []}, 400, "documents"),
                                ({"model": "ranker", "query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n"),
                                ({"model": "ranker", "query": "q", "documents": ["a"], "api_key": "x"}, 400,
                                 "api_key"),
                                ({"model": "fast", "query": "q", "documents": ["a"]}, 400, "model")):
        r = httpx.post(gateway.url + "/v1/rerank", json=body, headers=world["headers"])
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param, r.text
    assert upstream.requests == []


# --- parameters a model cannot honour -----------------------------------------------------------------------------

@pytest.mark.parametrize("param,value", [("n", 2), ("seed", 7), ("logprobs", True)])
def test_unsupported_parameter_is_refused_by_name_then_dropped_when_the_model_allows(gateway, upstream, world,
                                                                                    param, value):
    client = openai_client(gateway, world["key"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude", messages=HI, **{param: value})
    assert caught.value.body["code"] == "unsupported_parameter" and caught.value.body["param"] == param
    assert param in caught.value.body["message"] and upstream.requests == []

    assert client.chat.completions.create(model="fast", messages=HI, **{param: value}).choices  # OpenAI has it

    services.model_update(actor=SYSTEM, model=world["claude"], drop_unsupported_params=True)
    gateway.gw.catalog.invalidate()
    answer = client.chat.completions.create(model="claude", messages=HI, **{param: value})
    assert answer.choices[0].message.content == REPLY
    sent = upstream.last_request()
    assert sent["path"] == "/v1/messages" and param not in sent["json"]


def test_the_setting_is_in_the_rest_api(client, world, super_headers):
    from providers.models import AIModel

    claude = world["claude"]
    url = f"/api/v1/ai-providers/{claude.provider.public_id}/models/{claude.pk}"
    assert client.get(url, **super_headers).json()["drop_unsupported_params"] is False
    r = client.patch(url, data={"drop_unsupported_params": True}, content_type="application/json", **super_headers)
    assert r.status_code == 200, r.content
    assert r.json()["drop_unsupported_params"] is True
    assert AIModel.objects.get(pk=claude.pk).drop_unsupported_params
