"""Answers in the exact shape of OpenAI's API (its OpenAPI document, vendored in tests/): LiteLLM's response objects
are dumped without their None fields, which drops fields the spec requires even when they are null
(choices[].logprobs, message.content and message.refusal, a chunk's finish_reason). These put them back, and name
the model as the caller did: a response says the name the caller asked for, errors and /v1/models use
`public_name`, so one model has one name wherever a client meets it."""
from __future__ import annotations

from providers.gateway.catalog import qualified_name
from providers.models import AIModel


def public_name(model: AIModel) -> str:
    """How /v1/models lists a model first, and how errors name it: its alias, else <provider type>/<model id>."""
    return model.alias or qualified_name(model)


def chat_completion(data: dict, requested: str) -> dict:
    """A chat.completion object, in place."""
    data["model"] = requested
    data["object"] = "chat.completion"
    for choice in data.get("choices") or ():
        choice.pop("provider_specific_fields", None)  # LiteLLM's, not the API's
        choice.setdefault("logprobs", None)
        message = choice.setdefault("message", {})
        message.pop("provider_specific_fields", None)
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        message.setdefault("refusal", None)
    return data


def chat_chunk(data: dict, requested: str) -> dict:
    """A chat.completion.chunk object, in place."""
    data["model"] = requested
    data["object"] = "chat.completion.chunk"
    for choice in data.get("choices") or ():
        choice.pop("provider_specific_fields", None)  # LiteLLM's, not the API's
        choice.setdefault("delta", {}).pop("provider_specific_fields", None)
        choice.setdefault("finish_reason", None)
    return data


def embedding_list(data: dict, requested: str) -> dict:
    """An embedding list object, in place."""
    data["model"] = requested
    data["object"] = "list"
    for item in data.get("data") or ():
        item.setdefault("object", "embedding")
    return data


def text_completion(data: dict, requested: str) -> dict:
    """A text_completion object (the legacy completions API; chunks have the same shape), in place."""
    data["model"] = requested
    data["object"] = "text_completion"
    for choice in data.get("choices") or ():
        choice.setdefault("text", "")
        choice.setdefault("logprobs", None)
        choice.setdefault("finish_reason", None)
    return data


def rerank(data: dict, requested: str) -> dict:
    """Cohere's rerank answer (which Jina's and vLLM's clients read too): id, results sorted by relevance, meta;
    plus the model, named as asked."""
    results = [{k: v for k, v in r.items() if k in ("index", "relevance_score", "document")}
               for r in data.get("results") or ()]
    answer = {"id": data.get("id") or "", "model": requested, "results": results, "meta": data.get("meta") or {}}
    billed = answer["meta"].get("billed_units") or {}
    if billed.get("total_tokens"):
        answer["usage"] = {"total_tokens": billed["total_tokens"]}
    return answer
