"""What a /v1 request may contain: the fields of OpenAI's public API schema, each validated against that schema.

Nothing else reaches a call. LiteLLM accepts hundreds of keyword arguments beyond the OpenAI API (`api_base`,
`fallbacks`, `extra_headers`, `client`, `mock_response`, ...); a caller who could set them could choose where its
request, and the key it is sent with, goes. So the gateway accepts a body only when every top-level field is a
property of the endpoint's request schema (else 400 `unknown_parameter`, naming it) and the whole body is valid
against that schema (else 400 `invalid_value`, naming the field).

The schemas are the request schemas of OpenAI's OpenAPI document (openai/openai-openapi, MIT), extracted with
the components they reference into openai_request_schemas.json. Regenerate after updating the vendored spec:

    python -m providers.gateway.request_schema tests/openai-openapi.json.gz

(tests/test_request_allowlist.py fails when the extract and the vendored spec differ.) Validation runs in Rust
(jsonschema-rs): about a microsecond for a typical request.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("openai_request_schemas.json")
# /v1 endpoint -> its request schema in OpenAI's document
ENDPOINT_SCHEMAS = {"chat.completions": "CreateChatCompletionRequest", "embeddings": "CreateEmbeddingRequest",
                    "completions": "CreateCompletionRequest", "responses": "CreateResponse"}
# /v1 endpoints outside OpenAI's API -> (a JSON Schema document next to this module, the request schema's name)
OTHER_SCHEMAS = {"rerank": ("rerank_request_schema.json", "RerankRequest"),
                 "messages": ("anthropic_request_schema.json", "CreateMessageRequest")}

# Accepted as the API defines them but not passed to LiteLLM, which reads these names for its own purposes.
NOT_FORWARDED = frozenset({"metadata"})

# Fields that say what a call is, not how: never stored as a model's default call settings.
REQUEST_ONLY = frozenset({"model", "messages", "input", "stream", "stream_options", "metadata", "user"})

# Call arguments that choose an endpoint, a key, headers or a transport. Never accepted from a caller, a model's
# settings or a provider's config (LiteLLM's own list of its parameters is added to these, see routing_keys()).
ROUTING_KEYS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "endpoint", "azure_ad_token", "azure_ad_token_provider",
    "headers", "extra_headers", "extra_body", "extra_query", "default_headers", "client", "http_client",
    "proxy", "proxies", "transport", "timeout", "request_timeout", "max_retries", "num_retries", "fallbacks",
    "model", "custom_llm_provider", "ssl_verify", "aws_bedrock_runtime_endpoint", "aws_sts_endpoint",
    "vertex_ai_base_url", "mock_response",
})


class RequestInvalid(Exception):
    def __init__(self, message: str, *, param: str | None, code: str):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def extract(spec: dict) -> dict:
    """The request schemas of ENDPOINT_SCHEMAS with every component they reference (a JSON Schema document)."""
    components = spec["components"]["schemas"]
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    add(value.rsplit("/", 1)[-1])
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    def add(name: str):
        if name not in found:
            found[name] = components[name]
            walk(components[name])

    for name in ENDPOINT_SCHEMAS.values():
        add(name)
    return {"components": {"schemas": dict(sorted(found.items()))}}


def _properties(schemas: dict, name: str) -> frozenset[str]:
    schema, names = schemas[name], set()
    for part in schema.get("allOf", [schema]):
        if "$ref" in part:
            names |= _properties(schemas, part["$ref"].rsplit("/", 1)[-1])
        else:
            names |= set(part.get("properties", {}))
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def _validators() -> dict:
    import jsonschema_rs

    openai = json.loads(SCHEMA_FILE.read_text())
    sources = {endpoint: (openai, name) for endpoint, name in ENDPOINT_SCHEMAS.items()}
    for endpoint, (file, name) in OTHER_SCHEMAS.items():
        sources[endpoint] = (json.loads(SCHEMA_FILE.with_name(file).read_text()), name)
    out = {}
    for endpoint, (document, name) in sources.items():
        validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", **document})
        out[endpoint] = (_properties(document["components"]["schemas"], name), validator)
    return out


def request_fields(endpoint: str) -> frozenset[str]:
    return _validators()[endpoint][0]


@functools.lru_cache(maxsize=1)
def routing_keys() -> frozenset[str]:
    """ROUTING_KEYS plus every parameter LiteLLM itself defines beyond the OpenAI API."""
    from litellm.types.utils import all_litellm_params

    public = request_fields("chat.completions") | request_fields("embeddings")
    return ROUTING_KEYS | (frozenset(all_litellm_params) - public)


def _path(parts) -> str | None:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _lone_surrogate(value, path=()):
    """The path of the first string that is not valid Unicode text (a lone surrogate escaped in the JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _lone_surrogate(key) is not None:
            return path
        found = _lone_surrogate(item, (*path, key))
        if found is not None:
            return found
    return None


def validate_request(endpoint: str, body: dict, raw: bytes | None = None) -> None:
    """Raise RequestInvalid unless `body` has only the endpoint's public fields, each valid per the schema.

    `raw` (the request body as received) lets the check for lone surrogates run only when the JSON has escapes
    that could hold one."""
    fields, validator = _validators()[endpoint]
    for key in body:
        if key not in fields:
            name = str(key)[:100]
            api = {"messages": "Anthropic Messages API", "rerank": "Cohere rerank API"}.get(endpoint, "OpenAI API")
            raise RequestInvalid(f"Unrecognized request argument supplied: {name}. This endpoint accepts only the "
                                 f"fields of the {api}.", param=name, code="unknown_parameter")
    if raw is None or _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate(body)
        if where is not None:
            param = _path(where)
            raise RequestInvalid(f"Invalid value for '{param}': the text contains an unpaired surrogate "
                                 f"(\\ud800-\\udfff), which is not valid Unicode.", param=param, code="invalid_value")
    if validator.is_valid(body):
        return
    error = next(iter(validator.iter_errors(body)))
    param = _path(error.instance_path)
    if param is None:
        match = re.match(r'"([^"]+)" is a required property', error.message)
        param = match.group(1) if match else None
    message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
    raise RequestInvalid(f"Invalid value for '{param or 'body'}': {message}", param=param, code="invalid_value")


def validate_call_settings(settings: dict, *, endpoint: str, field: str) -> dict:
    """A model's stored call settings (model_config): only API parameters that are not REQUEST_ONLY, each valid
    per the endpoint's schema. Raises django's ValidationError naming the offending keys."""
    from django.core.exceptions import ValidationError

    if not isinstance(settings, dict):
        raise ValidationError({field: "Must be a JSON object of call parameters, e.g. {\"temperature\": 0.2}."})
    routing = sorted(k for k in settings if k in routing_keys())
    if routing:
        raise ValidationError({field: f"Not allowed here: {', '.join(routing)}. Endpoints, keys, headers and "
                                      "transport settings come from the provider and its credentials, never from a "
                                      "model's settings."})
    allowed = request_fields(endpoint) - REQUEST_ONLY
    unknown = sorted(str(k) for k in settings if k not in allowed)
    if unknown:
        raise ValidationError({field: f"Unknown call parameter(s): {', '.join(unknown)}. Allowed: "
                                      f"{', '.join(sorted(allowed))}."})
    probe = {"model": "x", **({"input": "x"} if endpoint == "embeddings" else
                              {"messages": [{"role": "user", "content": "x"}]}), **settings}
    try:
        validate_request(endpoint, probe)
    except RequestInvalid as exc:
        raise ValidationError({field: exc.message}) from None
    return settings


if __name__ == "__main__":  # regenerate the extract from a vendored spec
    import gzip
    import sys

    with gzip.open(sys.argv[1]) as fh:
        extracted = extract(json.load(fh))
    SCHEMA_FILE.write_text(json.dumps(extracted, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SCHEMA_FILE} ({len(extracted['components']['schemas'])} schemas)")
