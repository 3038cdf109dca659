"""Anthropic's Messages API on the gateway: POST /v1/messages, Anthropic's format in and out, streaming too, for any
inference model (OpenAI, Azure, Anthropic, vLLM...), through LiteLLM's Anthropic adapter (`litellm.anthropic_messages`).

The call runs through the one pipeline (`service.serve`: authentication, routing, tenant permissions, the request
allowlist of anthropic_request_schema.json, limits, failover, usage ledger); this module says only what is particular
to the format: the call, the answer's shape, its usage, its stream, and errors in Anthropic's shape
({"type": "error", "error": {"type", "message"}}, same HTTP statuses as every other /v1 endpoint).

What `litellm.anthropic_messages` answers (LiteLLM 1.108.6):
- not streamed: the Message as a dict, for every provider;
- streamed: an async iterator of bytes in SSE form (`event: <type>\\ndata: <json>\\n\\n`). For Anthropic itself these
  are the upstream's raw transport chunks (several events in one chunk, or an event split over two); through the
  adapter (OpenAI via the Responses API, Azure, vLLM... via chat completions) one event per chunk, and an upstream
  failure mid-stream arrives as an `event: error` of its own rather than an exception.
`_events` turns either into whole events, one dict each, and raises on an upstream error event (before anything was
sent, `serve` then fails over to the next model).
"""
from __future__ import annotations

import json
from typing import Any, Optional

from django.http import HttpResponse
from ninja import Router, Schema
from pydantic import BaseModel, ConfigDict, Field

from providers.choices import ModelType
from providers.gateway.http import ModelName, served
from providers.gateway.service import GatewayError, Operation, StreamReader, close_upstream, sse

# GatewayError status -> Anthropic's error type (its API's statuses: docs.anthropic.com, "Errors")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "api_error",
                502: "api_error", 504: "timeout_error", 529: "overloaded_error"}
# the Message's fields (anthropic.types.Message); anything else LiteLLM adds stays out
_MESSAGE_FIELDS = ("id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "stop_details",
                   "container", "usage")
# Anthropic's error types for an error event an upstream sends mid-stream -> the status it stands for
_UPSTREAM_STATUSES = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                      "not_found_error": 404, "rate_limit_error": 429, "overloaded_error": 529, "timeout_error": 504}


def anthropic_error_type(status: int, code: str | None = None) -> str:
    if code == "provider_paused":  # every provider of the model is failing: Anthropic's "overloaded"
        return "overloaded_error"
    return _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def anthropic_error_body(status: int, openai_error_body: dict) -> dict:
    """The gateway's error (OpenAI's shape: {"error": {"message", "type", "param", "code"}}) in Anthropic's shape, for
    an answer with HTTP status `status` on /v1/messages."""
    error = openai_error_body.get("error") if isinstance(openai_error_body, dict) else None
    error = error if isinstance(error, dict) else {}
    return {"type": "error", "error": {"type": anthropic_error_type(status, error.get("code")),
                                       "message": str(error.get("message") or "The request failed.")}}


def is_messages_path(path: str) -> bool:
    return path.rstrip("/") == "/v1/messages"


def anthropic_error_response(response: HttpResponse) -> HttpResponse:
    """An error answer in OpenAI's shape, rewritten in Anthropic's (status and headers kept): for every error answered
    on /v1/messages (see is_messages_path), whoever produced it."""
    try:
        body = json.loads(response.content)
    except (ValueError, AttributeError):
        return response
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict) or body.get("type") == "error":
        return response  # not an error in OpenAI's shape (or already in Anthropic's)
    response.content = json.dumps(anthropic_error_body(response.status_code, body), separators=(",", ":"))
    return response


# --- the call, its answer and its usage --------------------------------------------------------------------------

class UpstreamStreamError(Exception):
    """An error event in the upstream's stream: `status_code` is the status its Anthropic error type stands for."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def _parse(raw: bytes) -> dict | None:
    """One SSE event (its lines, without the blank line ending it) -> its data, with `type` (the event's name when
    the data has none); None for a comment or an event without data."""
    name, data = None, []
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if not data:
        return None
    try:
        event = json.loads("\n".join(data))
    except ValueError:
        raise UpstreamStreamError("the provider sent an event that could not be read", 502) from None
    if not isinstance(event, dict):
        raise UpstreamStreamError("the provider sent an event that could not be read", 502)
    if name and "type" not in event:
        event["type"] = name
    return event


def _checked(event: dict) -> dict:
    """The event; an upstream's error event raised. (LiteLLM's adapter writes an exception into its error event as
    text, "litellm.MidStreamFallbackError: ... AzureException APIConnectionError - Connection error.": the caller
    sees it through providers.llm.upstream_text, like every upstream failure, without the library's names.)"""
    if event.get("type") == "error":
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        message = str(error.get("message") or "")
        raise UpstreamStreamError(message or "the stream broke off", _UPSTREAM_STATUSES.get(error.get("type"), 500))
    return event


async def _events(stream):
    """LiteLLM's Anthropic stream (SSE bytes, as they come; dicts too) as whole events, one dict each."""
    buffer = b""
    try:
        async for chunk in stream:
            if isinstance(chunk, dict):
                yield _checked(chunk)
                continue
            buffer = (buffer + (chunk.encode() if isinstance(chunk, str) else bytes(chunk))).replace(b"\r\n", b"\n")
            *complete, buffer = buffer.split(b"\n\n")
            for raw in complete:
                if (event := _parse(raw)) is not None:
                    yield _checked(event)
        if buffer.strip() and (event := _parse(buffer.strip())) is not None:
            yield _checked(event)
    finally:
        await close_upstream(stream)


async def _invoke(body: dict, params: dict):
    """The call: the caller's fields (allowlisted by `serve`) as keyword arguments, then ours (the qualified model
    name, endpoint, key, timeouts), which nothing in the body can name."""
    from providers.llm import litellm

    response = await litellm.anthropic_messages(**body, **params)
    return _events(response) if body.get("stream") else response


def _shape(data: dict, requested: str) -> dict:
    """Anthropic's Message, naming the model as the caller asked for it."""
    message = {"type": "message", "role": "assistant", "content": [], "stop_reason": None, "stop_sequence": None}
    message.update((k, data[k]) for k in _MESSAGE_FIELDS if k in data)
    message["model"] = requested
    return message


def _tokens(usage: dict, key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and value > 0 else 0


def _input_tokens(usage: dict) -> int:
    """The prompt's tokens: Anthropic counts those read from and written to its prompt cache apart."""
    return sum(_tokens(usage, key) for key in ("input_tokens", "cache_creation_input_tokens",
                                               "cache_read_input_tokens"))


def _ledger_usage(data: dict) -> dict:
    """prompt_tokens / completion_tokens / total_tokens of a Message, for the usage ledger."""
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    prompt, completion = _input_tokens(usage), _tokens(usage, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text(value) -> list[str]:
    """The text of a prompt (system, messages, their blocks), for estimating its tokens."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _text(item)]
    if isinstance(value, dict):
        found = []
        for key in ("text", "content", "thinking", "source", "data" if value.get("type") == "text" else None):
            if key and key in value:  # (a document's text source has its text in `data`; images' data is not text)
                found += _text(value[key])
        if value.get("type") == "tool_use":
            found += [str(value.get("name") or ""), json.dumps(value.get("input") or {})]
        return found
    return []


def _prompt(body: dict) -> tuple:
    return None, "\n".join(_text(body.get("system")) + _text(body.get("messages")))


class MessagesStream(StreamReader):
    """Anthropic's stream events as they came (`event: <type>` + its data), the model named as asked: message_start,
    content_block_start / _delta / _stop, ping, message_delta, message_stop. Usage: the prompt's tokens from
    message_start (or message_delta, where the adapter reports them), the answer's from message_delta."""

    done = None  # message_stop is the upstream's own last event

    def __init__(self, body: dict, requested: str):
        super().__init__(body, requested)
        self.prompt_tokens = 0

    def frame(self, event: dict) -> bytes:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            event = {**event, "message": {**event["message"], "model": self.requested}}
            self.prompt_tokens = _input_tokens(event["message"].get("usage") or {})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.sent.append(str(block.get("name") or ""))
        elif kind == "content_block_delta":
            self.answered = True
            delta = event.get("delta") or {}
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    self.sent.append(delta[key])
        elif kind == "message_delta":
            usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
            prompt = _input_tokens(usage) or self.prompt_tokens
            completion = _tokens(usage, "output_tokens")
            self.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}
        return sse(event, kind if isinstance(kind, str) else None)

    def error_event(self, error: GatewayError) -> bytes:
        return sse({"type": "error", "error": {"type": anthropic_error_type(error.status, error.code),
                                               "message": error.message}}, "error")


MESSAGES = Operation("messages", ModelType.INFERENCE, _invoke, _shape, usage=_ledger_usage, stream=MessagesStream,
                     required="messages", prompt=_prompt)


# --- POST /v1/messages ---------------------------------------------------------------------------------------------

router = Router(tags=["anthropic"])


class MessageCreateIn(BaseModel):
    """Anthropic's Messages request. The documented core; every other field of anthropic_request_schema.json is
    accepted too, and the whole body is validated against it. Any field outside it is a 400 naming it."""

    model_config = ConfigDict(extra="allow")
    model: ModelName = Field(..., description="An alias, a model id, or <provider>/<model id>: any inference model "
                                              "of the gateway (OpenAI, Azure, Anthropic, vLLM...).")
    messages: list[dict[str, Any]] = Field(..., description="The conversation, as in Anthropic's API.")
    max_tokens: int = Field(..., description="The most tokens the answer may have.")
    stream: Optional[bool] = Field(None, description="Stream the answer as Anthropic's server-sent events.")


class MessageOut(Schema):
    """Anthropic's Message object."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: str = Field(..., description="message")
    role: str = Field(..., description="assistant")
    model: str
    content: list[dict[str, Any]]
    stop_reason: Optional[str] = None
    stop_sequence: Optional[str] = None
    usage: dict[str, Any]


class AnthropicErrorDetail(Schema):
    type: str = Field(..., description="invalid_request_error, authentication_error, permission_error, "
                                       "not_found_error, rate_limit_error, api_error, timeout_error, overloaded_error")
    message: str


class AnthropicErrorBody(Schema):
    """Anthropic's error shape."""

    type: str = Field("error", description="error")
    error: AnthropicErrorDetail


ANTHROPIC_ERRORS = {status: AnthropicErrorBody for status in (400, 401, 403, 404, 413, 415, 429, 502, 503, 504)}

# stream=true answers Anthropic's server-sent events; `itemSchema` (OpenAPI 3.2) describes one event.
ANTHROPIC_SSE = {"responses": {200: {"content": {"text/event-stream": {"itemSchema": {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "message_start, content_block_start, content_block_delta, "
                                                   "content_block_stop, ping, message_delta, message_stop, or error"},
        "data": {"type": "string", "description": "The event as JSON; its `type` is the event's name."}}}}}}}}


@router.post("/messages", response={200: MessageOut, **ANTHROPIC_ERRORS}, openapi_extra=ANTHROPIC_SSE)
async def create_message(request, payload: MessageCreateIn):
    """Create a message with Anthropic's Messages API (server-sent events when `stream` is true), with any inference
    model. Authenticate with `x-api-key: <tenant API key>` (as Anthropic's SDKs send it) or a Bearer token."""
    return await served(request, MESSAGES, payload)
