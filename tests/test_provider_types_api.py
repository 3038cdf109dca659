"""REST API /api/v1/provider-types: the registry, readable with any valid tenant API key or the super key."""
import pytest

from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create, api_key_revoke

BASE = "/api/v1/provider-types"


@pytest.fixture
def key_headers(tenant):
    plaintext = api_key_create(actor=SYSTEM, tenant=tenant, name="no scopes", scopes=[]).plaintext
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


@pytest.mark.parametrize("path", ["", "/openai", "/nosuchai"])
def test_auth_required(client, tenant, path):
    assert client.get(BASE + path).status_code == 401
    assert client.get(BASE + path, HTTP_X_API_KEY="wrong").status_code == 401
    revoked = api_key_create(actor=SYSTEM, tenant=tenant, name="gone", scopes=["*"])
    api_key_revoke(actor=SYSTEM, api_key=revoked.api_key)
    assert client.get(BASE + path, HTTP_AUTHORIZATION=f"Bearer {revoked.plaintext}").status_code == 401


def test_list_every_type_with_fields(client, key_headers, super_headers):
    r = client.get(BASE, **key_headers)  # any valid key: no scope needed
    assert r.status_code == 200
    types = {t["key"]: t for t in r.json()}
    assert {"openai", "azure", "anthropic", "hosted_vllm", "berget"} <= set(types) and "vllm" not in types
    azure = types["azure"]
    assert azure["label"] == "Azure OpenAI" and azure["litellm_prefix"] == "azure"
    assert azure["models_entered_by_deployment"] is True and "deployment" in azure["notes"]
    assert [(f["name"], f["required"], f["secret"], f["stored_in"]) for f in azure["fields"][:3]] == [
        ("api_key", False, True, "column"), ("base_url", True, False, "column"), ("api_version", True, False, "column")]
    assert set(azure["fields"][0]) == {"name", "label", "required", "secret", "help", "kind", "options", "default",
                                       "placeholder", "operator_only", "stored_in"}
    assert types["openai"]["known_model_count"] > 10 and types["hosted_vllm"]["lists_models"] is True
    assert types["berget"]["litellm_prefix"] == "openai"
    assert "known_models" not in types["openai"]
    assert client.get(BASE, **super_headers).json() == r.json()


def test_detail_with_known_models(client, key_headers):
    r = client.get(f"{BASE}/openai", **key_headers)
    assert r.status_code == 200
    body = r.json()
    models = {m["model_id"]: m for m in body["known_models"]}
    assert body["known_model_count"] == len(models)
    mini = models["gpt-4o-mini"]
    assert mini["context_window"] == 128000 and mini["supports_vision"] and mini["supports_tools"]
    assert mini["model_type"] == "inference" and mini["input_cost_per_million"] == "0.1500"
    assert set(mini) == {"model_id", "model_type", "context_window", "max_output_tokens", "supports_vision",
                         "supports_tools", "supports_reasoning", "supports_json_mode", "input_cost_per_million",
                         "output_cost_per_million"}
    assert models["text-embedding-3-small"]["model_type"] == "embedding"


@pytest.mark.parametrize("given", ["VLLM", "vllm", "Hosted_VLLM"])
def test_vllm_alias_and_case(client, key_headers, given):
    r = client.get(f"{BASE}/{given}", **key_headers)
    assert r.status_code == 200 and r.json()["key"] == "hosted_vllm"


def test_unknown_type_is_404_with_valid_types(client, key_headers, super_headers):
    for headers in (key_headers, super_headers):
        r = client.get(f"{BASE}/nosuchai", **headers)
        assert r.status_code == 404
        detail = r.json()["detail"]
        assert "Unknown provider type 'nosuchai'" in detail and "openai" in detail and "azure" in detail


def _litellm_catalog() -> dict:
    import importlib.util
    import json
    import os

    root = importlib.util.find_spec("litellm").submodule_search_locations[0]
    with open(os.path.join(root, "proxy", "public_endpoints", "provider_create_fields.json")) as fh:
        return {e["litellm_provider"]: e["credential_fields"] for e in reversed(json.load(fh))}


@pytest.mark.parametrize("ptype", ["bedrock", "vertex_ai", "azure", "watsonx"])
def test_fields_come_from_litellm_catalog(client, key_headers, ptype):
    """Each type's fields are LiteLLM's own (its proxy's field catalog), names mapped to ours (api_base ->
    base_url), secret where LiteLLM's input is a password or a file; our corrections on top."""
    body = client.get(f"{BASE}/{ptype}", **key_headers).json()
    ours = {f["name"]: f for f in body["fields"]}
    theirs = {("base_url" if f["key"] == "api_base" else f["key"]): f for f in _litellm_catalog()[ptype]}
    theirs.pop("aws_bedrock_runtime_endpoint", None)  # ours: the endpoint is base_url, under the egress policy
    assert set(ours) - {"base_url"} == set(theirs) - {"base_url"}  # every type has a base URL (Bedrock's
    # Converse endpoint, a private Vertex endpoint), checked by the egress policy
    for name, field in theirs.items():
        assert ours[name]["secret"] == (field["field_type"] in ("password", "upload")), name
        if name != "base_url":
            assert ours[name]["label"].lower() == field["label"].lower() or name == "api_key", name
    assert [f["stored_in"] for f in body["fields"]].count("column") == len({"api_key", "base_url",
                                                                            "api_version"} & set(ours))


def test_corrections_for_bedrock_vertex_and_operator_only_settings(client, key_headers):
    bedrock = {f["name"]: f for f in client.get(f"{BASE}/bedrock", **key_headers).json()["fields"]}
    assert bedrock["aws_region_name"]["required"] and bedrock["aws_region_name"]["stored_in"] == "config"
    assert bedrock["aws_secret_access_key"]["secret"] and bedrock["aws_secret_access_key"]["kind"] == "password"
    # the server's own identity: only sysadmins, only on instance-level providers
    assert bedrock["aws_profile_name"]["operator_only"] and bedrock["aws_role_name"]["operator_only"]
    assert not bedrock["aws_access_key_id"]["operator_only"]
    vertex = {f["name"]: f for f in client.get(f"{BASE}/vertex_ai", **key_headers).json()["fields"]}
    assert vertex["vertex_credentials"]["kind"] == "json" and vertex["vertex_credentials"]["secret"]
    assert vertex["vertex_project"]["required"] and vertex["vertex_location"]["required"]
    sagemaker = {f["name"] for f in client.get(f"{BASE}/sagemaker", **key_headers).json()["fields"]}
    assert {"aws_access_key_id", "aws_secret_access_key", "aws_region_name"} <= sagemaker
