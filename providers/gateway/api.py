"""The OpenAI-compatible API under /v1: async django-ninja handlers, so any OpenAI client works against it.

Auth: `Authorization: Bearer <tenant API key>` (eneo_...). Errors have OpenAI's shape:
{"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional, Union

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tenants.parsers import JsonParser, body_error

from providers.gateway.core import request_gateway, request_token
from providers.gateway.http import (
    ERRORS,
    SSE,
    ErrorBody,
    ModelName,
    authenticate,
    error_response,
    json_response,
    requested_model,
    served,
)
from providers.gateway.messages import anthropic_error_response, is_messages_path
from providers.gateway.messages import router as messages_router
from providers.gateway.responses import router as responses_router
from providers.gateway.service import CHAT, COMPLETIONS, EMBEDDINGS, RERANK, GatewayError, models_for

log = logging.getLogger("eneo.gateway")


openai_api = NinjaAPI(
    title="Eneo LLM gateway: OpenAI-compatible API",
    version="1.0.0",
    description="Chat completions (with streaming), embeddings and the model list, for any OpenAI client. "
                "Authenticate with `Authorization: Bearer <tenant API key>`.",
    urls_namespace="openai-v1",
    docs_url="/docs",
    parser=JsonParser(),
)
openai_api.add_router("", responses_router)  # POST /v1/responses (providers/gateway/responses.py)
openai_api.add_router("", messages_router)  # POST /v1/messages (providers/gateway/messages.py)


def _in_format(request, response: HttpResponse) -> HttpResponse:
    """Errors on /v1/messages in Anthropic's shape (same status and headers)."""
    return anthropic_error_response(response) if is_messages_path(request.path) else response


class ChatCompletionIn(BaseModel):
    """The documented core; every other field of OpenAI's request schema is accepted too, and the whole body is
    validated against that schema (providers.gateway.request_schema). Any field outside it is a 400 naming it."""

    model_config = ConfigDict(extra="allow")
    model: ModelName = Field(..., description="An alias, a model id, or <provider>/<model id> (azure/..., "
                                              "openai/...).")
    messages: list[dict[str, Any]] = Field(..., description="The conversation, as in OpenAI's API.")
    stream: Optional[bool] = Field(False, description="Stream the answer as server-sent events.")
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None


class EmbeddingIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: ModelName
    input: Union[str, list[str], list[int], list[list[int]]]


class CompletionIn(BaseModel):
    """OpenAI's legacy completions request; every field of its schema is accepted and validated."""

    model_config = ConfigDict(extra="allow")
    model: ModelName
    prompt: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    stream: Optional[bool] = False


class RerankIn(BaseModel):
    """Cohere's rerank request (v1/v2; Jina's and vLLM's clients send the same)."""

    model_config = ConfigDict(extra="allow")
    model: ModelName
    query: str
    documents: list[Union[str, dict[str, Any]]]
    top_n: Optional[int] = None
    return_documents: Optional[bool] = None


class ChatCompletionOut(Schema):
    """OpenAI's chat.completion object (fields beyond these pass through from the provider)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = Field(..., description="chat.completion")
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Optional[dict[str, Any]] = None


class EmbeddingOut(Schema):
    model_config = ConfigDict(extra="allow")
    object: str = Field(..., description="embedding")
    index: int
    embedding: Union[list[float], str] = Field(..., description="Floats, or a base64 string "
                                                                 "(encoding_format=base64).")


class EmbeddingListOut(Schema):
    model_config = ConfigDict(extra="allow")
    object: str = Field(..., description="list")
    data: list[EmbeddingOut]
    model: str
    usage: Optional[dict[str, Any]] = None


class ModelOut(Schema):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    type: str


class ModelList(Schema):
    object: str = "list"
    data: list[ModelOut]


@openai_api.exception_handler(GatewayError)
def on_gateway_error(request, exc: GatewayError):
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return _in_format(request, json_response(exc.body(), exc.status, headers))


def _refused(request, response: HttpResponse, *, read_body: bool = True) -> HttpResponse:
    """Records an error answered before `authenticate` ran (ninja validates the body first) for a known key."""
    from tenants.throttle import client_address

    error = json.loads(response.content)["error"]
    request_gateway(request).record_refusal(
        request_token(request),
        client_address(request), request.path, response.status_code, error["code"] or error["type"],
        requested_model(request) if read_body else "")
    return response


@openai_api.exception_handler(NinjaValidationError)
def on_invalid(request, exc: NinjaValidationError):
    parts, params = [], []
    for err in exc.errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", [])[1:] if p != "payload") or "body"
        parts.append(f"{loc}: {err.get('msg')}")
        params.append(loc)
    response = error_response(400, "Invalid request: " + "; ".join(parts), "invalid_request_error", "invalid_value",
                              param=params[0] if params and params[0] != "body" else None)
    return _in_format(request, _refused(request, response))


@openai_api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    """ninja's own errors (e.g. a body that is not JSON), in OpenAI's shape."""
    status, message = body_error(exc) or (exc.status_code, str(exc))
    code = {413: "request_too_large", 415: "unsupported_media_type"}.get(status)
    response = error_response(status, message, "invalid_request_error" if status < 500 else "api_error", code)
    return _in_format(request, _refused(request, response, read_body=status not in (413, 415)) if status < 500
                      else response)


@openai_api.exception_handler(RequestDataTooBig)
def on_too_big(request, exc):
    response = error_response(413, f"The request body is too large: at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} "
                                   f"bytes.", "invalid_request_error", "request_too_large")
    return _in_format(request, _refused(request, response, read_body=False))


@openai_api.exception_handler(Exception)
def on_unexpected(request, exc):
    log.exception("gateway: unexpected error on %s", request.path)
    return _in_format(request, error_response(500, "Internal error in the gateway.", "api_error"))


@openai_api.post("/chat/completions", response={200: ChatCompletionOut, **ERRORS}, tags=["openai"],
                 openapi_extra=SSE)
async def create_chat_completion(request, payload: ChatCompletionIn):
    """Create a chat completion (non-streaming JSON, or SSE when `stream` is true), as OpenAI's API does."""
    return await served(request, CHAT, payload)


@openai_api.post("/completions", response={200: dict[str, Any], **ERRORS}, tags=["openai"], openapi_extra=SSE)
async def create_completion(request, payload: CompletionIn):
    """Create a text completion (OpenAI's legacy completions API; SSE when `stream` is true)."""
    return await served(request, COMPLETIONS, payload)


@openai_api.post("/embeddings", response={200: EmbeddingListOut, **ERRORS}, tags=["openai"])
async def create_embedding(request, payload: EmbeddingIn):
    """Create embeddings for a string or a list of strings."""
    return await served(request, EMBEDDINGS, payload)


@openai_api.post("/rerank", response={200: dict[str, Any], **ERRORS}, tags=["rerank"])
async def create_rerank(request, payload: RerankIn):
    """Rank `documents` by relevance to `query` with a rerank model (Cohere's request and answer; Jina and vLLM
    clients work too): results sorted by relevance_score, at most top_n, with the documents if return_documents."""
    return await served(request, RERANK, payload)


@openai_api.get("/models", response={200: ModelList, 401: ErrorBody, 403: ErrorBody}, tags=["openai"])
async def list_models(request):
    """The models this API key may use: aliases and <provider>/<model id> names."""
    caller = await authenticate(request)
    return json_response({"object": "list", "data": await models_for(caller)})


@openai_api.get("/models/{path:model}", response={200: ModelOut, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody},
                tags=["openai"])
async def retrieve_model(request, model: str):
    """One model this API key may use, by a name GET /v1/models lists (`openai/gpt-4o-mini` needs no escaping)."""
    caller = await authenticate(request)
    for entry in await models_for(caller):
        if entry["id"] == model:
            return json_response(entry)
    raise GatewayError(404, f"The model '{model[:100]}' does not exist or is not available to you.",
                       type_="invalid_request_error", param="model", code="model_not_found")
