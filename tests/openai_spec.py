"""Validation of /v1 answers against OpenAI's OpenAPI document (tests/openai-openapi.json.gz, from
openai/openai-openapi, MIT): every JSON body and every SSE event a test receives can be checked against the schema
the spec gives for it. OpenAPI 3.1 schemas are JSON Schema 2020-12, validated with jsonschema-rs."""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import jsonschema_rs

SPEC = Path(__file__).with_name("openai-openapi.json.gz")

# /v1 endpoint -> (schema of a JSON answer, schema of one SSE event's data)
ANSWERS = {
    "chat.completions": ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
    "completions": ("CreateCompletionResponse", "CreateCompletionResponse"),
    "embeddings": ("CreateEmbeddingResponse", None),
    "models": ("ListModelsResponse", None),
    "model": ("Model", None),
    "responses": ("Response", "ResponseStreamEvent"),
    "error": ("ErrorResponse", None),
}


def _nullable(node):
    """OpenAPI 3.1 is JSON Schema, but the document still marks some fields with 3.0's `nullable: true`, which JSON
    Schema ignores (a chunk's `finish_reason: null` would fail `type: string`). Read as the spec means it: the
    schema, or null."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.get("nullable") is True:
        del node["nullable"]
        return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _document() -> dict:
    spec = json.loads(gzip.decompress(SPEC.read_bytes()))
    return {"components": _nullable(spec["components"])}


@functools.cache
def validator(schema: str):
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{schema}", **_document()})


def violations(schema: str, value) -> list[str]:
    """The spec violations of `value` against components.schemas[schema], as readable lines."""
    return [f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message[:300]}"
            for e in validator(schema).iter_errors(value)]


def assert_conforms(schema: str, value) -> None:
    found = violations(schema, value)
    assert not found, f"{schema}: {len(found)} violation(s):\n" + "\n".join(found[:10])


def assert_answer(endpoint: str, body) -> None:
    """A non-streamed JSON answer of `endpoint` conforms to the spec."""
    assert_conforms(ANSWERS[endpoint][0], body)


def sse_events(lines) -> list:
    """The JSON objects of an SSE stream's `data:` lines (without the final [DONE])."""
    events = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def assert_stream(endpoint: str, events: list) -> None:
    """Every event of a stream of `endpoint` conforms to the spec (an error event to the error schema)."""
    schema = ANSWERS[endpoint][1]
    for n, event in enumerate(events):
        found = violations("ErrorResponse" if "error" in event and len(event) == 1 else schema, event)
        assert not found, f"event {n} of {len(events)} ({schema}):\n" + "\n".join(found[:10]) + f"\n{event}"
