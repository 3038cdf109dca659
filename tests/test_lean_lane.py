"""The lean lane (providers/gateway/lean.py): OpenAI-wire providers are called with our own HTTP client, everything
else through LiteLLM; the pipeline around the call (egress, redirects, error mapping, failover, ledger, masking)
behaves the same on both lanes. The gateway test modules run on both lanes too (tests/conftest.py LANE_MODULES)."""
import json

import httpx
import openai
import pytest

from credentials.resolution import ResolvedCredential
from providers.gateway import lean
from providers.models import Provider
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import CANARY, openai_client, usage_rows
from .factories import make_model, make_provider, upstream_provider

HI = [{"role": "user", "content": "hi"}]
BOTH = pytest.mark.parametrize("lane", ["lean", "litellm"], indirect=True)


@pytest.fixture
def world(gateway, upstream, tenant):
    oa = upstream_provider(upstream, "openai", api_key=CANARY)
    make_model(oa, model_id="gpt-4o-mini", alias="fast")
    make_model(oa, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    az = upstream_provider(upstream, "azure")
    make_model(az, model_id="gpt4o-deploy", alias="duo")
    make_model(oa, model_id="gpt-4o", alias="duo")
    an = upstream_provider(upstream, "anthropic")
    make_model(an, model_id="claude-3-5-haiku-20241022", alias="claude")
    own = make_provider(tenant=tenant, name="Acme vLLM", provider_type="hosted_vllm", base_url=upstream.url + "/v1",
                        api_key="vllm-acme-key-0004")
    make_model(own, model_id="meta-llama/Llama-3.1-8B-Instruct", alias="llama")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    return {"key": key, "openai": oa, "azure": az, "own": own, "client": openai_client(gateway, key)}


@pytest.fixture
def no_litellm_calls(monkeypatch):
    """LiteLLM's call functions fail: whatever still succeeds went through the lean lane."""
    from providers.llm import litellm

    async def refuse(*args, **kwargs):
        raise RuntimeError("LiteLLM was called")

    monkeypatch.setattr(litellm, "acompletion", refuse)
    monkeypatch.setattr(litellm, "aembedding", refuse)


def _sdk(request) -> str:
    return request["headers"].get("user-agent", "")


@pytest.mark.parametrize("lane", ["lean"], indirect=True)
def test_openai_wire_types_take_the_lane_and_others_litellm(gateway, upstream, world, no_litellm_calls):
    client = world["client"]
    assert client.chat.completions.create(model="fast", messages=HI).choices[0].message.content
    assert client.chat.completions.create(model="azure/gpt4o-deploy", messages=HI).choices[0].message.content
    assert client.chat.completions.create(model="llama", messages=HI).choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="fast", messages=HI, stream=True) if c.choices)
    assert text == "Hello from fake upstream"
    assert len(client.embeddings.create(model="embed", input=["one", "two"]).data) == 2
    oa, az, vllm, streamed, embedded = upstream.requests
    assert (oa["path"], oa["key"], oa["json"]["model"]) == ("/v1/chat/completions", CANARY, "gpt-4o-mini")
    assert az["path"] == "/openai/deployments/gpt4o-deploy/chat/completions"
    assert az["query"] == {"api-version": "2024-06-01"} and az["headers"]["api-key"] == "az-provider-key-0002"
    assert "authorization" not in az["headers"]
    assert (vllm["json"]["model"], vllm["key"]) == ("meta-llama/Llama-3.1-8B-Instruct", "vllm-acme-key-0004")
    assert streamed["json"]["stream_options"] == {"include_usage": True}  # for the ledger
    assert embedded["path"] == "/v1/embeddings"
    assert not any("OpenAI/Python" in _sdk(r) for r in upstream.requests)  # not the SDK inside LiteLLM
    with pytest.raises(openai.APIStatusError) as exc:  # anthropic: LiteLLM, which fails here
        client.chat.completions.create(model="claude", messages=HI)
    assert exc.value.status_code == 502
    rows = usage_rows(gateway, 6)
    assert [r.status for r in rows] == ["ok"] * 5 + ["error"]
    assert rows[3].streamed and rows[3].tokens_out == 4


@pytest.mark.parametrize("lane", ["litellm"], indirect=True)
def test_the_setting_turns_the_lane_off(gateway, upstream, world, no_litellm_calls):
    with pytest.raises(openai.APIStatusError):
        world["client"].chat.completions.create(model="fast", messages=HI)
    assert upstream.requests == []


def _cred(provider_type="openai", **fields):
    return ResolvedCredential(provider_type, "provider_key", **{"api_key": "sk-x", **fields})


def test_which_calls_the_lane_takes(settings):
    settings.GATEWAY_LEAN_LANE = True
    assert lean.target("openai", _cred(), "gpt-4o").url("chat/completions") == "https://api.openai.com/v1/chat/completions"
    org = lean.target("openai", _cred(settings={"organization": "org-1"}), "gpt-4o")
    assert org.headers["OpenAI-Organization"] == "org-1" and "sk-x" not in repr(org)
    az = lean.target("azure", _cred("azure", api_base="https://r.openai.azure.com/", api_version="2024-06-01",
                                    deployment_name="prod"), "gpt4o")
    assert az.url("chat/completions") == \
        "https://r.openai.azure.com/openai/deployments/prod/chat/completions?api-version=2024-06-01"
    assert az.headers["api-key"] == "sk-x" and az.model == "prod"
    assert lean.target("hosted_vllm", _cred("hosted_vllm", api_base="http://v:8000/v1/"), "m").base == "http://v:8000/v1"
    assert lean.target("berget", _cred("berget", api_base="https://api.berget.ai/v1"), "m") is not None
    for provider_type, cred, model in [
        ("anthropic", _cred("anthropic"), "claude"),  # not OpenAI's wire protocol
        ("openai", _cred(), "o3-mini"), ("openai", _cred(), "gpt-5"),  # LiteLLM rewrites their parameters
        ("azure", _cred("azure", api_base="https://r", api_version="v", deployment_name="o1-prod"), "x"),
        ("azure", _cred("azure", api_base="https://r", deployment_name="d"), "x"),  # no api-version
        ("azure", _cred("azure", api_key=None, api_base="https://r", api_version="v",
                        settings={"azure_ad_token": "t"}), "x"),  # an Entra ID login
        ("azure", _cred("azure", api_base="https://r/openai/deployments/d", api_version="v"), "x"),  # a path
        ("hosted_vllm", _cred("hosted_vllm"), "m"),  # no endpoint
        ("openai", _cred(settings={"something_else": "x"}), "gpt-4o"),  # a setting the lane cannot send
    ]:
        assert lean.target(provider_type, cred, model) is None, (provider_type, cred, model)
    settings.GATEWAY_LEAN_LANE = False
    assert lean.target("openai", _cred(), "gpt-4o") is None


@pytest.mark.parametrize("lane", ["lean"], indirect=True)
def test_a_tenant_endpoint_at_a_refused_address_is_refused_at_connect_time(gateway, upstream, attacker, tenant,
                                                                           settings, no_litellm_calls):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    own = make_provider(tenant=tenant, name="Tenant box", provider_type="openai", base_url=upstream.url + "/v1",
                        api_key=CANARY)
    make_model(own, model_id="gpt-4o-mini", alias="mine")
    client = openai_client(gateway, key)
    for base in (attacker.url + "/v1",  # an IP literal the rule refuses
                 upstream.url.replace("127.0.0.1", "localhost") + "/v1"):  # a name resolving to one
        settings.ENDPOINT_ALLOWED_HOSTS = []
        Provider.objects.filter(pk=own.pk).update(base_url=base)
        gateway.gw.catalog.invalidate()
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(model="mine", messages=HI)
        assert exc.value.status_code == 502 and exc.value.body["code"] == "endpoint_not_allowed", exc.value.body
        assert CANARY not in str(exc.value.body)
    assert attacker.requests == [] and upstream.requests == []


@BOTH
def test_redirects_are_errors_never_followed(gateway, upstream, attacker, world):
    upstream.set_fault("redirect", location=attacker.url, append_path=True)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as exc:
            world["client"].chat.completions.create(model="fast", messages=HI, stream=stream)
        assert exc.value.status_code == 502 and "redirect" in exc.value.body["message"]
    assert attacker.requests == []


@BOTH
@pytest.mark.parametrize("fault,opts,status,code", [
    ("status", {"status": 401}, 502, "upstream_auth_failed"),
    ("status", {"status": 429, "retry_after": 7}, 429, "upstream_rate_limited"),
    ("status", {"status": 500}, 502, "upstream_error"),
    ("status", {"status": 400}, 400, "upstream_bad_request"),
    ("timeout", {"seconds": 3}, 504, "upstream_timeout"),
])
def test_upstream_errors_map_alike_and_fail_over(gateway, upstream, world, settings, fault, opts, status, code):
    settings.GATEWAY_TIMEOUT = 0.5
    upstream.set_fault(fault, path_contains="/v1/chat/completions", **opts)
    with pytest.raises(openai.APIStatusError) as exc:
        world["client"].chat.completions.create(model="fast", messages=HI)
    assert (exc.value.status_code, exc.value.body["code"]) == (status, code)
    if status == 429:
        assert exc.value.response.headers["retry-after"] == "7"
    assert CANARY not in exc.value.response.text
    # an alias fails over to its next model (Azure) unless the request itself was refused
    upstream.requests.clear()
    if status == 400:
        with pytest.raises(openai.BadRequestError):
            world["client"].chat.completions.create(model="duo", messages=HI)
    else:
        assert world["client"].chat.completions.create(model="duo", messages=HI).choices[0].message.content
        assert upstream.requests[-1]["path"] == "/openai/deployments/gpt4o-deploy/chat/completions"


@BOTH
def test_keys_never_in_logs(gateway, upstream, world, all_logs):
    client = world["client"]
    client.chat.completions.create(model="fast", messages=HI)
    list(client.chat.completions.create(model="fast", messages=HI, stream=True))
    upstream.set_fault("status", status=401, message=f"Incorrect API key provided: {CANARY}")
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="fast", messages=HI)
    upstream.set_fault("close")
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="fast", messages=HI)
    usage_rows(gateway, 4)
    assert CANARY not in str(exc.value.body)
    logs = "\n".join(all_logs["raw"] + all_logs["masked"])
    assert CANARY not in logs and CANARY[-20:] not in logs


@pytest.mark.parametrize("lane", ["lean"], indirect=True)
def test_stream_is_relayed_with_usage_only_when_asked(gateway, upstream, world):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {world['key']}"},
                      json={"model": "fast", "stream": True, "messages": HI}) as r:
        lines = [line for line in r.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]" and not any("usage" in c for c in chunks)
    assert all(c["model"] == "fast" and c["object"] == "chat.completion.chunk" for c in chunks)
    [row] = usage_rows(gateway)
    assert (row.status, row.tokens_in, row.tokens_out, row.tokens_estimated) == ("ok", 1, 4, False)
