"""A fake LLM upstream: a real aiohttp server on 127.0.0.1 speaking OpenAI, Azure OpenAI and Anthropic.

In tests (runner.FakeUpstream: a background thread with its own event loop)::

    from tests.fake_upstream import start_fake_upstream

    with start_fake_upstream() as up:            # port=0: a free port
        litellm.completion(model="openai/gpt-4o-mini", api_base=up.url + "/v1", api_key="sk-x", messages=[...])
        assert up.keys_seen() == ["sk-x"]
        up.set_fault("status", status=429, times=1, path_contains="/chat/completions")

By hand, for benchmarks: ``python -m tests.fake_upstream --port 9100 --latency-ms 50``.

LiteLLM api_base per provider: ``openai/`` -> ``up.url + "/v1"`` (used as-is, ``/chat/completions`` appended);
``azure/`` -> ``up.url`` (``/openai/deployments/{model}/...?api-version=`` appended); ``anthropic/`` -> ``up.url``
(``/v1/messages`` appended, so a base ending in ``/v1`` gives ``/v1/v1/messages``, a 404).

Model endpoints: OpenAI ``POST /v1/chat/completions``, ``POST /v1/completions`` (legacy text completions),
``POST /v1/responses`` (Responses API; streamed as ``event: <type>`` SSE with increasing ``sequence_number`` and no
``[DONE]``), ``POST /v1/embeddings``, ``GET /v1/models`` (each also served without the ``/v1`` prefix); Azure
``POST /openai/deployments/{name}/chat/completions|completions|embeddings?api-version=``; Anthropic
``POST /v1/messages`` (and ``GET /v1/models`` with ``x-api-key`` + ``anthropic-version``); Cohere-style rerank
``POST /v1/rerank``, ``/v2/rerank`` and ``/rerank`` (results sorted by word overlap with the query, ties by index,
cut to ``top_n``). A request without an API key gets a 401, like the real APIs.

LiteLLM rerank paths: ``cohere/`` -> ``api_base + "/v2/rerank"`` (``/v1/rerank`` if api_base ends with it, so pass
``up.url``: ``up.url + "/v1"`` gives ``/v1/v2/rerank``, a 404); ``jina_ai/`` -> ``/v1/rerank`` on api_base's host
(its path is dropped); ``hosted_vllm/`` -> ``api_base + "/rerank"``.

Control: ``POST /__control/fault`` ({mode, path_contains?, key?, times?, ...opts}), ``DELETE /__control/fault``,
``POST /__control/reset``, ``GET /__control/requests``, ``GET|POST /__control/config`` ({models, latency_ms,
spread_stream_latency, reply, usage_cost: chat answers report it as usage.cost, as OpenRouter does}). Fault modes:
status, timeout, slow, drop_stream, malformed, close, redirect.

``redirect`` answers a redirect instead of serving the route: ``location`` (required) is the target URL, ``status``
(default 307; 301, 302, 303, 307 or 308) the code, and ``append_path=True`` appends the request's path and query to
``location``, so ``up.set_fault("redirect", location=other.url, append_path=True)`` sends every route to the same
route of another server. The request is recorded here like any other.

Several servers can listen side by side on different loopback addresses (Linux routes all of 127.0.0.0/8 to lo):
``start_fake_upstream(host="127.0.0.2")``; each records only the requests that reach it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from aiohttp import web

REPLY = "Hello from fake upstream"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
MAX_RECORDS = 1000
FAULT_MODES = frozenset({"status", "timeout", "slow", "drop_stream", "malformed", "close", "redirect"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CONTROL_PREFIX = "/__control/"

# status -> (Anthropic error type, OpenAI error type, OpenAI error code)
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "invalid_request_error", None),
    401: ("authentication_error", "invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "invalid_request_error", None),
    404: ("not_found_error", "invalid_request_error", "model_not_found"),
    413: ("request_too_large", "invalid_request_error", None),
    429: ("rate_limit_error", "requests", "rate_limit_exceeded"),
    500: ("api_error", "server_error", None),
    503: ("api_error", "server_error", None),
    529: ("overloaded_error", "server_error", None),
}
_ids = itertools.count(1)


class RecordedRequest(TypedDict):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, None when absent or not JSON
    key: str | None  # the API key that reached the server (see extract_key)


@dataclass
class Fault:
    mode: str
    path_contains: str | None = None
    key: str | None = None
    times: int | None = None  # None = forever
    opts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; expected one of {sorted(FAULT_MODES)}")
        if self.mode == "status" and "status" not in self.opts:
            raise ValueError("fault mode 'status' needs a status option")
        if self.mode == "redirect":
            if not isinstance(self.opts.get("location"), str) or not self.opts["location"]:
                raise ValueError("fault mode 'redirect' needs a location option (the target URL)")
            if int(self.opts.get("status", 307)) not in REDIRECT_STATUSES:
                raise ValueError(f"fault mode 'redirect' takes a status in {sorted(REDIRECT_STATUSES)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or None for forever)")

    def matches(self, path_qs: str, key: str | None, stream: bool) -> bool:
        return (
            (self.path_contains is None or self.path_contains in path_qs)
            and (self.key is None or self.key == key)
            and (self.mode != "drop_stream" or stream)
        )


def extract_key(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer X`, `api-key: X` or `x-api-key: X` -> X (headers with lower-cased names)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return headers.get("api-key") or headers.get("x-api-key") or None


class UpstreamState:
    """Records, faults and settings, shared between the server loop and test threads."""

    def __init__(
        self,
        *,
        models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
        latency_ms: float = 0,
        spread_stream_latency: bool = False,
        reply: str = REPLY,
        usage_cost: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._records: deque[RecordedRequest] = deque(maxlen=MAX_RECORDS)
        self._faults: list[Fault] = []
        self.models = list(models)
        self.latency_ms = latency_ms
        self.spread_stream_latency = spread_stream_latency
        self.reply = reply
        self.usage_cost = usage_cost  # chat answers report this cost in usage.cost (as OpenRouter does)

    def record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._records.append(rec)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._faults.clear()

    def take_fault(self, path_qs: str, key: str | None, stream: bool) -> Fault | None:
        """The first matching fault, with one use consumed."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(path_qs, key, stream):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def config(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "latency_ms": self.latency_ms,
            "spread_stream_latency": self.spread_stream_latency,
            "reply": self.reply,
            "usage_cost": self.usage_cost,
        }


STATE = web.AppKey("state", UpstreamState)


# --- helpers -------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Text of a message content: a string, a list of parts, or a part/message dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return _text(value.get("text") or value.get("content") or "")
    return ""


def _inputs(raw: Any) -> list[Any]:
    """An OpenAI `prompt`/`input` as a list of items: a string or a token-id list alone, or a list of those."""
    if isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(x, int) for x in raw)):
        return [raw]
    return raw if isinstance(raw, list) else [raw]


def _tokens(item: Any) -> int:
    """Tokens of one input item: its words, or its length when it is already a token-id list."""
    return len(item.split()) if isinstance(item, str) else len(item) if isinstance(item, list) else 0


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = len(_text(body.get("messages") or []).split()) + len(_text(body.get("system") or "").split())
    return max(1, words)


def _is_anthropic(request: web.Request) -> bool:
    return request.path.endswith("/messages") or "anthropic-version" in request.headers


def error_response(request: web.Request, status: int, message: str | None = None, **headers: str) -> web.Response:
    """An error shaped like the protocol's: Anthropic or OpenAI (also Azure)."""
    anthropic_type, openai_type, code = _ERRORS.get(status, ("api_error", "server_error", None))
    message = message or f"Fake upstream error {status}"
    if _is_anthropic(request):
        body: dict[str, Any] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        body = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _check_request(request: web.Request, body: Any, *required: str) -> web.Response | None:
    if request["key"] is None:
        return error_response(request, 401, "No API key provided.")
    if not isinstance(body, dict):
        return error_response(request, 400, "We could not parse the JSON body of your request.")
    for name in required:
        if name not in body:
            return error_response(request, 400, f"{name}: Field required")
    return None


def _sse(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{prefix}data: {payload}\n\n".encode()


def _pieces(text: str) -> list[str]:
    """Split the reply into word chunks that keep their leading space ("Hello", " from", ...)."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if text else [""]


async def _latency(request: web.Request) -> None:
    ms = request.app[STATE].latency_ms
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    """Write SSE events; honours latency (up-front or spread) and the drop_stream fault."""
    state = request.app[STATE]
    spread = state.spread_stream_latency and state.latency_ms > 0
    if not spread:
        await _latency(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    fault: Fault | None = request["fault"]
    for i, event in enumerate(events):
        if spread:
            await asyncio.sleep(state.latency_ms / 1000 / len(events))
        if fault is not None and fault.mode == "drop_stream" and i == 2:
            _close(request)  # flushes what was written, then FIN without the final empty chunk
            return resp
        await resp.write(event)
    await resp.write_eof()
    return resp


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _embedding(item: Any) -> list[float]:
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [round(b / 255 - 0.5, 6) for b in digest[:8]]


# --- middleware: recording and faults ------------------------------------------------------------------------


@web.middleware
async def record_and_fault(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    headers = {k.lower(): v for k, v in request.headers.items()}
    key = extract_key(headers)
    state.record(
        RecordedRequest(
            method=request.method, path=request.path, query=dict(request.query), headers=headers, json=body, key=key
        )
    )
    request["body"], request["key"] = body, key
    stream = isinstance(body, dict) and body.get("stream") is True
    fault = request["fault"] = state.take_fault(request.path_qs, key, stream)
    if fault is not None:
        if fault.mode == "status":
            status = int(fault.opts["status"])
            extra = {"Retry-After": str(fault.opts.get("retry_after", 1))} if status == 429 else {}
            return error_response(request, status, fault.opts.get("message"), **extra)
        if fault.mode == "redirect":
            return _redirect(request, fault)
        if fault.mode in ("timeout", "slow"):
            await asyncio.sleep(float(fault.opts.get("seconds", 30)))
        elif fault.mode == "malformed":
            return web.Response(body=b'{"id": "broken", "choices": [{"mess', content_type="application/json")
        elif fault.mode == "close":
            _close(request)
            return web.Response()  # never written: aiohttp swallows the ConnectionError
    return await handler(request)


def _redirect(request: web.Request, fault: Fault) -> web.Response:
    location = fault.opts["location"]
    if fault.opts.get("append_path"):
        location = location.rstrip("/") + request.path_qs
    body = {"error": {"message": f"Moved to {location}", "type": "redirect", "param": None, "code": None}}
    return web.json_response(body, status=int(fault.opts.get("status", 307)), headers={"Location": location})


# --- OpenAI / Azure ------------------------------------------------------------------------------------------


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """With function tools offered (and tool_choice not "none"), the model calls the first one (or the one
    tool_choice names), with a value for each required parameter; once the conversation holds a tool result it
    answers in text."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice")
    if not tools or choice == "none" or any(m.get("role") == "tool" for m in body.get("messages") or ()
                                            if isinstance(m, dict)):
        return None
    tool = tools[0]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tool = next((t for t in tools if t["function"].get("name") == wanted), tool)
    function = tool.get("function") or {}
    schema = function.get("parameters") or {}
    arguments = {name: "Paris" if (schema.get("properties") or {}).get(name, {}).get("type") == "string" else 1
                 for name in schema.get("required") or ()}
    return {"id": f"call_fake{next(_ids)}", "type": "function",
            "function": {"name": function.get("name", ""), "arguments": json.dumps(arguments)}}


async def chat_completions(request: web.Request, model: str | None = None) -> web.StreamResponse:
    body = request["body"]
    if (bad := _check_request(request, body, "messages", *(() if model else ("model",)))) is not None:
        return bad
    state = request.app[STATE]
    model = body.get("model") or model
    base = {"id": f"chatcmpl-fake{next(_ids)}", "created": int(time.time()), "model": model, "system_fingerprint": None}
    prompt, completion = _prompt_tokens(body), len(state.reply.split())
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if state.usage_cost is not None:
        usage["cost"] = state.usage_cost
    call = _tool_call(body)
    if not body.get("stream"):
        await _latency(request)
        message = {"role": "assistant", "content": state.reply, "refusal": None}
        if call is not None:
            message.update(content=None, tool_calls=[call])
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": "stop" if call is None else "tool_calls"}
        return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "object": "chat.completion.chunk", "choices": [choice], **extra})

    if call is not None:  # the call's id and name first, then its arguments in two pieces, as OpenAI streams them
        arguments = call["function"]["arguments"]
        head = {"index": 0, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        events = [chunk({"role": "assistant", "content": None, "tool_calls": [head]})]
        half = len(arguments) // 2
        events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                   for part in (arguments[:half], arguments[half:])]
        events.append(chunk({}, "tool_calls"))
        if include_usage:
            events.append(_sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        events.append(_sse("[DONE]"))
        return await _stream(request, events)
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _pieces(state.reply)]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(_sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    events.append(_sse("[DONE]"))
    return await _stream(request, events)


async def embeddings(request: web.Request, model: str | None = None) -> web.StreamResponse:
    body = request["body"]
    if (bad := _check_request(request, body, "input", *(() if model else ("model",)))) is not None:
        return bad
    items = _inputs(body["input"])
    data = []
    for index, item in enumerate(items):
        vector: Any = _embedding(item)
        if body.get("encoding_format") == "base64":  # the openai SDK asks for base64 by default
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = max(1, sum(_tokens(x) for x in items))
    await _latency(request)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body.get("model") or model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def list_models(request: web.Request) -> web.StreamResponse:
    if request["key"] is None:
        return error_response(request, 401, "No API key provided.")
    models = request.app[STATE].models
    if "x-api-key" in request.headers and "anthropic-version" in request.headers:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2024-06-20T00:00:00Z"} for m in models
        ]
        first, last = (models[0], models[-1]) if models else (None, None)
        return web.json_response({"data": data, "has_more": False, "first_id": first, "last_id": last})
    data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in models]
    return web.json_response({"object": "list", "data": data})


def _azure(handler: Any) -> Any:
    async def azure_handler(request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        return await handler(request, model=request.match_info["deployment"])

    return azure_handler


def _azure_v1(handler: Any) -> Any:
    """Azure OpenAI's routes without a deployment in the path (the Responses API): the model is in the body."""
    async def azure_handler(request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        return await handler(request)

    return azure_handler


# --- OpenAI: legacy completions and the Responses API --------------------------------------------------------


async def completions(request: web.Request, model: str | None = None) -> web.StreamResponse:
    body = request["body"]
    if (bad := _check_request(request, body, "prompt", *(() if model else ("model",)))) is not None:
        return bad
    n = body.get("n") or 1
    if not isinstance(n, int) or n < 1:
        return error_response(request, 400, "n: must be a positive integer")
    state = request.app[STATE]
    prompts = _inputs(body["prompt"])
    echo = bool(body.get("echo"))
    texts = [(p if echo and isinstance(p, str) else "") + state.reply for p in prompts for _ in range(n)]
    model = body.get("model") or model
    base = {"id": f"cmpl-fake{next(_ids)}", "object": "text_completion", "created": int(time.time()), "model": model}
    prompt, completion = max(1, sum(_tokens(p) for p in prompts)), len(state.reply.split()) * len(texts)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if not body.get("stream"):
        await _latency(request)
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": "stop"} for i, t in enumerate(texts)]
        return web.json_response({**base, "choices": choices, "usage": usage})

    events = []
    for index, text in enumerate(texts):
        pieces = _pieces(text)
        for position, piece in enumerate(pieces, 1):
            finish = "stop" if position == len(pieces) else None
            choice = {"text": piece, "index": index, "logprobs": None, "finish_reason": finish}
            events.append(_sse({**base, "choices": [choice]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(_sse("[DONE]"))
    return await _stream(request, events)


def _echoed_tool(tool: Any) -> Any:
    """A request's tool as a Response lists it: OpenAI fills in a function tool's optional fields."""
    if isinstance(tool, dict) and tool.get("type") == "function":
        return {"description": None, "parameters": None, "strict": True, **tool}
    return tool


def _response_object(
    body: dict[str, Any], ids: tuple[str, int], output: list[Any], usage: dict[str, Any] | None
) -> dict[str, Any]:
    """A Response (ids: its id and created_at) as OpenAI sends it, echoing the request's settings; in progress
    until usage is given."""
    done = usage is not None
    response: dict[str, Any] = {
        "id": ids[0],
        "object": "response",
        "created_at": ids[1],
        "status": "completed" if done else "in_progress",
        "background": False,
        "completed_at": int(time.time()) if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echoed_tool(tool) for tool in body.get("tools") or []],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "metadata": body.get("metadata") or {},
    }
    if done:  # OpenAI sends "usage": null while in progress, which the spec's ResponseUsage does not allow
        response["usage"] = usage
    return response


async def responses(request: web.Request) -> web.StreamResponse:
    body = request["body"]
    if (bad := _check_request(request, body, "model", "input")) is not None:
        return bad
    state = request.app[STATE]
    ids, item_id = (f"resp_fake{next(_ids)}", int(time.time())), f"msg_fake{next(_ids)}"
    prompt = max(1, len(_text(body["input"]).split()) + len(_text(body.get("instructions") or "").split()))
    completion = len(state.reply.split())
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    part = {"type": "output_text", "text": state.reply, "annotations": [], "logprobs": []}
    item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]}
    if not body.get("stream"):
        await _latency(request)
        return web.json_response(_response_object(body, ids, [item], usage))

    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(sequence), **fields}, kind)

    started = _response_object(body, ids, [], None)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events = [
        event("response.created", response=started),
        event("response.in_progress", response=started),
        event("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []}),
        event("response.content_part.added", **where, part={**part, "text": ""}),
    ]
    events += [event("response.output_text.delta", **where, delta=d, logprobs=[]) for d in _pieces(state.reply)]
    events += [
        event("response.output_text.done", **where, text=state.reply, logprobs=[]),
        event("response.content_part.done", **where, part=part),
        event("response.output_item.done", output_index=0, item=item),
        event("response.completed", response=_response_object(body, ids, [item], usage)),
    ]
    return await _stream(request, events)


# --- Anthropic -----------------------------------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    body = request["body"]
    if "anthropic-version" not in request.headers:
        return error_response(request, 400, "anthropic-version: header is required")
    if (bad := _check_request(request, body, "model", "messages", "max_tokens")) is not None:
        return bad
    state = request.app[STATE]
    usage = {"input_tokens": _prompt_tokens(body), "output_tokens": len(state.reply.split())}
    message: dict[str, Any] = {
        "id": f"msg_fake{next(_ids):020d}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": state.reply}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        await _latency(request)
        return web.json_response(message)

    block = {"type": "text", "text": ""}
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [
        _sse({"type": "message_start", "message": start}, "message_start"),
        _sse({"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start"),
        _sse({"type": "ping"}, "ping"),
    ]
    for piece in _pieces(state.reply):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        events.append(_sse(delta, "content_block_delta"))
    events += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return await _stream(request, events)


# --- rerank (Cohere v1/v2, Jina, vLLM) -----------------------------------------------------------------------


def _words(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'()").lower() for w in text.split()} - {""}


async def rerank(request: web.Request) -> web.StreamResponse:
    body = request["body"]
    if (bad := _check_request(request, body, "model", "query", "documents")) is not None:
        return bad
    documents, top_n = body["documents"], body.get("top_n")
    if not isinstance(documents, list):
        return error_response(request, 400, "documents: must be a list")
    if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
        return error_response(request, 400, "top_n: must be a positive integer")
    query = _words(_text(body["query"]))
    texts = [_text(doc) for doc in documents]
    scores = [round(len(query & _words(text)) / max(1, len(query)), 6) for text in texts]
    ranked = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:top_n]
    results: list[dict[str, Any]] = [{"index": i, "relevance_score": scores[i]} for i in ranked]
    if body.get("return_documents"):
        for result in results:
            result["document"] = {"text": texts[result["index"]]}
    tokens = max(1, len(_text(body["query"]).split()) + sum(len(text.split()) for text in texts))
    billed = {"search_units": max(1, math.ceil(len(texts) / 100))}  # Cohere bills per 100 documents
    await _latency(request)
    return web.json_response(
        {
            "id": f"rerank-fake{next(_ids)}",
            "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": billed},
            "usage": {"total_tokens": tokens},  # Jina's and vLLM's usage; LiteLLM's jina/hosted_vllm parsers read it
        }
    )


# --- control -------------------------------------------------------------------------------------------------


async def control_fault(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if request.method == "DELETE":
        state.clear_faults()
        return web.json_response({"ok": True})
    try:
        opts = dict(await request.json())
        fault = Fault(
            mode=opts.pop("mode", ""),
            path_contains=opts.pop("path_contains", None),
            key=opts.pop("key", None),
            times=opts.pop("times", None),
            opts=opts,
        )
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    state.add_fault(fault)
    return web.json_response({"ok": True, "fault": asdict(fault)})


async def control_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


async def control_requests(request: web.Request) -> web.StreamResponse:
    records = request.app[STATE].requests()
    return web.json_response({"requests": records, "keys_seen": [r["key"] for r in records if r["key"]]})


async def control_config(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            update = dict(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for name in ("models", "latency_ms", "spread_stream_latency", "reply", "usage_cost"):
            if name in update:
                setattr(state, name, update[name])
    return web.json_response(state.config())


async def bedrock_converse(request: web.Request) -> web.StreamResponse:
    """AWS Bedrock's Converse API (POST /model/{modelId}/converse): SigV4-signed requests; the signature is not
    checked, its Authorization header is recorded (credential scope: key id, date, region, service)."""
    body = request["body"]
    if not str(request.headers.get("Authorization", "")).startswith("AWS4-HMAC-SHA256 Credential="):
        return web.json_response({"message": "Missing Authentication Token"}, status=403)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return web.json_response({"message": "messages: required"}, status=400)
    state = request.app[STATE]
    prompt = sum(_tokens(block.get("text", "")) for m in body["messages"] if isinstance(m, dict)
                 for block in m.get("content") or [] if isinstance(block, dict))
    completion = len(state.reply.split())
    await _latency(request)
    return web.json_response({
        "output": {"message": {"role": "assistant", "content": [{"text": state.reply}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": prompt, "outputTokens": completion, "totalTokens": prompt + completion},
        "metrics": {"latencyMs": 1},
    })


def build_app(state: UpstreamState | None = None) -> web.Application:
    app = web.Application(middlewares=[record_and_fault], client_max_size=64 * 1024**2)
    app[STATE] = state or UpstreamState()
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_post(f"{prefix}/messages", messages)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_post(f"{prefix}/responses", responses)
        app.router.add_post(f"{prefix}/rerank", rerank)
    app.router.add_post("/v2/rerank", rerank)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _azure(chat_completions))
    app.router.add_post("/openai/deployments/{deployment}/embeddings", _azure(embeddings))
    app.router.add_post("/openai/deployments/{deployment}/completions", _azure(completions))
    app.router.add_post("/openai/responses", _azure_v1(responses))
    app.router.add_post("/openai/v1/responses", _azure_v1(responses))
    app.router.add_post("/model/{model_id}/converse", bedrock_converse)
    app.router.add_post(CONTROL_PREFIX + "fault", control_fault)
    app.router.add_delete(CONTROL_PREFIX + "fault", control_fault)
    app.router.add_post(CONTROL_PREFIX + "reset", control_reset)
    app.router.add_get(CONTROL_PREFIX + "requests", control_requests)
    app.router.add_get(CONTROL_PREFIX + "config", control_config)
    app.router.add_post(CONTROL_PREFIX + "config", control_config)
    return app
