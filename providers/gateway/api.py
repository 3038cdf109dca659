"""The OpenAI-compatible API under /v1: async django-ninja handlers, so any OpenAI client works against it.

Auth: `Authorization: Bearer <tenant API key>` (eneo_...). Errors have OpenAI's shape:
{"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Optional, Union

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, StreamingHttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from tenants.parsers import JsonParser, body_error
from tenants.request_id import current_request_id
from tenants.scopes import Scope

from providers.gateway.core import bearer_token, endpoint_name, request_gateway
from providers.gateway.service import Caller, GatewayError, chat_completion, embeddings, models_for

log = logging.getLogger("eneo.gateway")

GATEWAY_SCOPE = Scope.GATEWAY

openai_api = NinjaAPI(
    title="Eneo LLM gateway: OpenAI-compatible API",
    version="1.0.0",
    description="Chat completions (with streaming), embeddings and the model list, for any OpenAI client. "
                "Authenticate with `Authorization: Bearer <tenant API key>`.",
    urls_namespace="openai-v1",
    docs_url="/docs",
    parser=JsonParser(),
)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed.")
    return value


ModelName = Annotated[str, StringConstraints(max_length=300), AfterValidator(_no_nul)]


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


class ErrorDetail(Schema):
    message: str
    type: str = Field(..., description="invalid_request_error, permission_error, rate_limit_error, api_error, ...")
    param: Optional[str] = Field(None, description="The request field at fault, if any.")
    code: Optional[str] = Field(None, description="e.g. invalid_api_key, model_not_found, request_too_large.")


class ErrorBody(Schema):
    """OpenAI's error shape."""

    error: ErrorDetail


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


def _json(data: dict, status: int = 200, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(data, separators=(",", ":")), status=status,
                            content_type="application/json")
    for k, v in (headers or {}).items():
        response[k] = v
    return response


def _error(status: int, message: str, type_: str, code: str | None = None, param=None, headers=None):
    return _json({"error": {"message": message, "type": type_, "param": param, "code": code}}, status, headers)


@openai_api.exception_handler(GatewayError)
def on_gateway_error(request, exc: GatewayError):
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return _json(exc.body(), exc.status, headers)


def _requested_model(request) -> str:
    """The body's `model`, if the body can be read as a JSON object (for the ledger's record of a refused call)."""
    data = getattr(request, "preparsed_json", None)
    if data is None:
        try:
            data = json.loads(request.body) if len(request.body) <= 1_000_000 else None
        except Exception:  # noqa: BLE001 - too large, not JSON: no model name then
            data = None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


def _refused(request, response: HttpResponse, *, read_body: bool = True) -> HttpResponse:
    """Records an error answered before `authenticate` ran (ninja validates the body first) for a known key."""
    from tenants.throttle import client_address

    error = json.loads(response.content)["error"]
    request_gateway(request).record_refusal(
        bearer_token(request.headers.get("Authorization", ""), request.headers.get("api-key", "")),
        client_address(request), request.path, response.status_code, error["code"] or error["type"],
        _requested_model(request) if read_body else "")
    return response


@openai_api.exception_handler(NinjaValidationError)
def on_invalid(request, exc: NinjaValidationError):
    parts, params = [], []
    for err in exc.errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", [])[1:] if p != "payload") or "body"
        parts.append(f"{loc}: {err.get('msg')}")
        params.append(loc)
    return _refused(request, _error(400, "Invalid request: " + "; ".join(parts), "invalid_request_error",
                                    "invalid_value", param=params[0] if params and params[0] != "body" else None))


@openai_api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    """ninja's own errors (e.g. a body that is not JSON), in OpenAI's shape."""
    status, message = body_error(exc) or (exc.status_code, str(exc))
    code = {413: "request_too_large", 415: "unsupported_media_type"}.get(status)
    response = _error(status, message, "invalid_request_error" if status < 500 else "api_error", code)
    return _refused(request, response, read_body=status not in (413, 415)) if status < 500 else response


@openai_api.exception_handler(RequestDataTooBig)
def on_too_big(request, exc):
    return _refused(request, _error(413, f"The request body is too large: at most "
                                         f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.", "invalid_request_error",
                                    "request_too_large"), read_body=False)


@openai_api.exception_handler(Exception)
def on_unexpected(request, exc):
    log.exception("gateway: unexpected error on %s", request.path)
    return _error(500, "Internal error in the gateway.", "api_error")


async def authenticate(request) -> Caller:
    from tenants.throttle import auth_throttle, client_address, throttled_message  # key guessing (per address)

    address = client_address(request)
    if retry_after := await auth_throttle.aretry_after(address):
        raise GatewayError(429, throttled_message(retry_after), type_="rate_limit_error",
                           code="too_many_auth_failures", retry_after=retry_after)
    token = bearer_token(request.headers.get("Authorization", ""), request.headers.get("api-key", ""))
    gateway = request_gateway(request)
    snapshot, key = await gateway.catalog.authenticate(token)  # fresh for the key's tenant (catalog.py)
    if key is None:
        if token:
            await auth_throttle.arecord_failure(address)
        raise GatewayError(401, "Invalid or missing API key. Send 'Authorization: Bearer <tenant API key>'.",
                           type_="invalid_request_error", code="invalid_api_key")
    if not key.has_scope(GATEWAY_SCOPE):
        if key.tenant_id in snapshot.tenants:
            gateway.usage.refused(key.tenant_id, key.pk, _requested_model(request), endpoint_name(request.path), 403,
                                  "insufficient_scope", current_request_id.get())
        raise GatewayError(403, f"This API key lacks the scope {GATEWAY_SCOPE}.", type_="permission_error",
                           code="insufficient_scope")
    tenant = snapshot.tenants.get(key.tenant_id)
    if tenant is None:
        raise GatewayError(401, "The API key's tenant is inactive.", type_="invalid_request_error",
                           code="invalid_api_key")
    return Caller(tenant=tenant, api_key=key, snapshot=snapshot, gateway=gateway)


ERRORS = {400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 413: ErrorBody, 415: ErrorBody,
          429: ErrorBody, 502: ErrorBody, 503: ErrorBody, 504: ErrorBody}


# stream=true answers server-sent events; `itemSchema` (OpenAPI 3.2) describes one event.
SSE = {"responses": {200: {"content": {"text/event-stream": {"itemSchema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A chat.completion.chunk object as JSON; the last "
                                                               "event is `[DONE]`."}}}}}}}}


@openai_api.post("/chat/completions", response={200: ChatCompletionOut, **ERRORS}, tags=["openai"],
                 openapi_extra=SSE)
async def create_chat_completion(request, payload: ChatCompletionIn):
    """Create a chat completion (non-streaming JSON, or SSE when `stream` is true), as OpenAI's API does."""
    caller = await authenticate(request)
    result = await chat_completion(caller, payload.model_dump(exclude_none=True), request.body)
    if isinstance(result, dict):
        return _json(result)
    response = StreamingHttpResponse(result, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@openai_api.post("/embeddings", response={200: EmbeddingListOut, **ERRORS}, tags=["openai"])
async def create_embedding(request, payload: EmbeddingIn):
    """Create embeddings for a string or a list of strings."""
    caller = await authenticate(request)
    return _json(await embeddings(caller, payload.model_dump(exclude_none=True), request.body))


@openai_api.get("/models", response={200: ModelList, 401: ErrorBody, 403: ErrorBody}, tags=["openai"])
async def list_models(request):
    """The models this API key may use: aliases and <provider>/<model id> names."""
    caller = await authenticate(request)
    return _json({"object": "list", "data": await models_for(caller)})


@openai_api.get("/models/{path:model}", response={200: ModelOut, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody},
                tags=["openai"])
async def retrieve_model(request, model: str):
    """One model this API key may use, by a name GET /v1/models lists (`openai/gpt-4o-mini` needs no escaping)."""
    caller = await authenticate(request)
    for entry in await models_for(caller):
        if entry["id"] == model:
            return _json(entry)
    raise GatewayError(404, f"The model '{model[:100]}' does not exist or is not available to you.",
                       type_="invalid_request_error", param="model", code="model_not_found")
