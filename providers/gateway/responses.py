"""OpenAI's Responses API at POST /v1/responses (JSON, or server-sent events when `stream` is true), through the same
pipeline as chat (providers.gateway.service.serve): tenant API key, model routing and permissions, the request
allowlist (OpenAI's CreateResponse schema), budget, limits, failover, usage ledger and errors.

LiteLLM's `aresponses` calls providers that speak the Responses API natively with it (openai, hosted_vllm, azure,
xai, ...) and bridges the others (anthropic, ...) to chat completions, turning the answer and its stream back into
Response objects and events. (For a model its price list does not know, e.g. any hosted_vllm model, LiteLLM asks for
the whole answer and replays it as a stream.) Either way the caller gets OpenAI's shapes: every Response (the answer,
and the one inside response.* events) names the model as the caller asked for it and carries the fields the spec
requires (`response_object`), and stream events get OpenAI's `event: <type>` framing with a `sequence_number`
counted here (the bridge leaves most events without one).

What a gateway over arbitrary providers cannot do is refused (400 `unsupported_parameter`, naming the field), for
every provider alike, never dropped in silence (`refuse_unsupported`):

- `previous_response_id`, `conversation`: the conversation state they refer to would live at the provider, under a
  key many tenants share (a tenant could continue another's conversation by its id), or in LiteLLM's spend logs,
  which the gateway does not keep. Send the whole conversation in `input`.
- `store: true`, `background: true`: nothing is stored or run in the background, and no endpoint would fetch it.
  `store` is sent as false on every call (OpenAI's default is true), so no provider keeps the tenants' exchanges;
  answers say `"store": false`.
- `prompt` (a stored prompt template), `context_management` (server-side compaction), `moderation`: OpenAI's
  hosted services.
- tools other than `function` (web_search, file_search, computer_use, code_interpreter, image_generation, mcp,
  shell, custom, ...) and a `tool_choice` naming one: they run at OpenAI, or the bridge turns them into something
  else (web_search into a provider's own search) or drops them.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from ninja import Router
from pydantic import BaseModel, ConfigDict, Field

from providers.choices import ModelType
from providers.gateway.http import ERRORS, ModelName, served
from providers.gateway.service import GatewayError, Operation, StreamReader, dump, sse

# --- what is refused --------------------------------------------------------------------------------------------

_NO_STATE = "This gateway keeps no conversation state: send the whole conversation in 'input'."
_HOSTED = "It needs OpenAI's hosted services, which this gateway does not offer."
REFUSED_FIELDS = {  # field -> why; refused when set (not null, not false)
    "previous_response_id": _NO_STATE,
    "conversation": _NO_STATE,
    "store": "This gateway does not store responses: leave 'store' out or set it to false.",
    "background": "Background responses are not supported: leave 'background' out or set it to false.",
    "prompt": "Stored prompt templates are not available through this gateway: send the prompt in "
              "'instructions' and 'input'.",
    "context_management": _HOSTED,
    "moderation": _HOSTED,
}
TOOL_TYPES = frozenset({"function"})  # tools the caller runs itself, which every provider can be asked to call
TOOL_CHOICE_TYPES = frozenset({"function", "allowed_tools"})


def _unsupported(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, type_="invalid_request_error", param=param, code="unsupported_parameter")


def refuse_unsupported(body: dict) -> None:
    """Raise a 400 GatewayError naming the first field of `body` that the gateway cannot honour (module docstring).
    Values of the wrong type are left to the schema validation."""
    for field, why in REFUSED_FIELDS.items():
        if body.get(field) not in (None, False):
            raise _unsupported(f"'{field}' is not supported. {why}", field)
    tools = body.get("tools")
    for n, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind not in TOOL_TYPES:
            raise _unsupported(f"Tools of type '{kind[:50]}' are not supported: only function tools are. "
                               f"Built-in tools run at OpenAI, which this gateway does not call for you.",
                               f"tools[{n}].type")
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(kind, str) and kind not in TOOL_CHOICE_TYPES:
        raise _unsupported(f"'tool_choice' of type '{kind[:50]}' is not supported: only function tools are.",
                           "tool_choice.type")


# --- shapes -----------------------------------------------------------------------------------------------------

# LiteLLM's own fields on its objects, never part of OpenAI's API
_PRIVATE = ("provider_specific_fields", "_hidden_params", "_response_headers")
# events that carry a whole Response; the terminal ones carry the usage
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# events whose text counts as an answer (and, when the provider reports no usage, as the completion)
_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
                     "response.reasoning_text.delta", "response.reasoning_summary_text.delta"})
_WITH_LOGPROBS = frozenset({"response.output_text.delta", "response.output_text.done"})


def _usage_of(response: dict) -> dict:
    """A Response's usage, without LiteLLM's cost estimate."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return {}
    usage.pop("cost", None)
    return usage


def ledger_usage(response: dict) -> dict:
    """prompt_tokens / completion_tokens / total_tokens (the ledger's) of a Response's input/output tokens."""
    usage = _usage_of(response)
    if not usage:
        return {}
    tokens_in, tokens_out = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
            "total_tokens": int(usage.get("total_tokens") or tokens_in + tokens_out)}


def response_object(data: dict, requested: str) -> dict:
    """A Response object, in place: named as asked, with the fields the spec requires even when null (which the dump
    drops, and the chat-completions bridge never sets), nothing of LiteLLM's own, and `store`/`background` false
    (nothing is stored or run in the background: module docstring)."""
    for key in _PRIVATE:
        data.pop(key, None)
    data["model"] = requested
    data["object"] = "response"
    data["store"] = data["background"] = False
    for key in ("error", "incomplete_details", "instructions", "temperature", "top_p"):
        data.setdefault(key, None)
    data.setdefault("output", [])
    data.setdefault("tools", [])
    data.setdefault("tool_choice", "auto")
    data.setdefault("parallel_tool_calls", True)
    data.setdefault("metadata", {})
    _usage_of(data)
    for item in data["output"]:
        output_item(item)
    return data


def output_item(item) -> None:
    """An output item, in place: without LiteLLM's fields; a message's text parts as the spec has them."""
    if not isinstance(item, dict):
        return
    item.pop("provider_specific_fields", None)
    if item.get("type") == "message":
        for part in item.get("content") or ():
            content_part(part)


def content_part(part) -> None:
    """A message's content part, in place: an output_text part has annotations and logprobs (the bridge sets no
    logprobs)."""
    if isinstance(part, dict) and part.get("type") == "output_text":
        part.setdefault("annotations", [])
        part.setdefault("logprobs", [])


def responses_input_text(body: dict) -> str:
    """The text of a request's `instructions` and `input` (for a token estimate when the provider reports none)."""
    parts: list[str] = []

    def walk(value):
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key in ("text", "content", "output", "arguments"):
                walk(value.get(key))

    walk(body.get("instructions"))
    walk(body.get("input"))
    return "\n".join(parts)


# --- the stream -------------------------------------------------------------------------------------------------

class ResponsesStream(StreamReader):
    """Response stream events as OpenAI sends them: `event: <type>` and `data: <event>`, numbered from 0, every
    Response in them named as asked; no [DONE]. The usage comes with the terminal event (response.completed)."""

    done = None

    def __init__(self, body: dict, requested: str):
        super().__init__(body, requested)
        self.sequence = 0

    def event(self, data: dict) -> bytes:
        data["sequence_number"] = self.sequence
        self.sequence += 1
        return sse(data, event=data["type"])

    def frame(self, chunk):
        data = dump(chunk)
        kind = data["type"] = getattr(data.get("type"), "value", data.get("type"))  # LiteLLM's are enum members
        if not isinstance(kind, str):
            return None
        for key in _PRIVATE:
            data.pop(key, None)
        response = data.get("response")
        if isinstance(response, dict):
            response_object(response, self.requested)
            if kind in _TERMINAL:
                self.usage = ledger_usage(response) or self.usage
                self.answered = True
            if kind == "response.failed":
                self.failed = str((response.get("error") or {}).get("code") or "upstream_failed")
        output_item(data.get("item"))
        content_part(data.get("part"))
        if kind in _WITH_LOGPROBS:
            data.setdefault("logprobs", [])
        if kind in _DELTAS and isinstance(data.get("delta"), str):
            self.answered = True
            self.sent.append(data["delta"])
        return self.event(data)

    def error_event(self, error: GatewayError) -> bytes:
        """OpenAI's error event of a responses stream."""
        return self.event({"type": "error", "code": error.code or error.type, "message": error.message,
                           "param": error.param})


# --- the operation ----------------------------------------------------------------------------------------------

def _responses(body, params):
    from providers.llm import litellm

    return litellm.aresponses(**{**body, "store": False}, **params)


RESPONSES = Operation("responses", ModelType.INFERENCE, _responses, response_object, usage=ledger_usage,
                      stream=ResponsesStream, required="input", check=refuse_unsupported,
                      prompt=lambda body: (None, responses_input_text(body)))


# --- the endpoint -----------------------------------------------------------------------------------------------

router = Router(tags=["responses"])

# stream=true answers server-sent events; `itemSchema` (OpenAPI 3.2) describes one event.
SSE_EVENTS = {"responses": {200: {"content": {"text/event-stream": {"itemSchema": {
    "type": "object", "required": ["event", "data"],
    "properties": {"event": {"type": "string", "description": "The event's type, e.g. response.output_text.delta."},
                   "data": {"type": "string", "description": "The event as JSON (OpenAI's ResponseStreamEvent). The "
                                                             "stream ends with response.completed (or an error "
                                                             "event); there is no [DONE]."}}}}}}}}


class ResponseIn(BaseModel):
    """The documented core; every other field of OpenAI's CreateResponse schema is accepted too and the whole body is
    validated against that schema. Fields outside it are a 400 naming them; so are the features this gateway
    cannot offer (previous_response_id, conversation, store, background, prompt, built-in tools, ...)."""

    model_config = ConfigDict(extra="allow")
    model: ModelName = Field(..., description="An alias, a model id, or <provider>/<model id>.")
    input: Union[str, list[dict[str, Any]]] = Field(..., description="Text, or a list of input items (the whole "
                                                                       "conversation: no state is kept).")
    stream: Optional[bool] = Field(None, description="Stream the response as server-sent events.")


@router.post("/responses", response={200: dict[str, Any], **ERRORS}, openapi_extra=SSE_EVENTS)
async def create_response(request, payload: ResponseIn):
    """Create a model response (OpenAI's Responses API; SSE when `stream` is true). Stateless: no
    previous_response_id, conversation, store or background; function tools only."""
    return await served(request, RESPONSES, payload)
