"""The lean lane: chat completions and embeddings on providers that speak OpenAI's wire protocol, sent with our own
pooled HTTP client instead of litellm.acompletion / aembedding (about 2.7 ms of CPU per call in LiteLLM's
orchestration, against well under a millisecond here).

It slots in at the invoke point of the completion service (service.Operation.lean), so everything before and after
the upstream call stays as it is: request allowlist, model resolution, budget, limits, credential resolution and
its binding of keys to endpoints, egress scope, failover, breaker, usage ledger, answer shapes.

Taken when GATEWAY_LEAN_LANE is on and `target` finds a plain OpenAI-wire call:
- provider types WIRE_TYPES (openai, azure, hosted_vllm, openai_like, custom_openai, lm_studio and the
  OpenAI-compatible services LiteLLM has no name for, e.g. berget);
- an endpoint: the credential's api_base (openai: OpenAI's default), for Azure also an api-version, an API key
  (Entra ID / AD-token logins go through LiteLLM) and a bare resource endpoint (no path);
- the type's settings are ones the lane sends as headers (openai's organization) or ignores (Azure's base_model,
  used for prices only); any other setting: LiteLLM;
- not a reasoning model of OpenAI or Azure (o1/o3/o4, gpt-5): LiteLLM rewrites their parameters (max_tokens ->
  max_completion_tokens, unsupported temperatures dropped), so they stay with it.
Everything else goes through LiteLLM as before. The body is the validated caller body (OpenAI's own schema, so it
needs no translation for an OpenAI-wire server) with the model's stored call settings under it and `model` set to
the provider's model id (Azure: the deployment in the path).

The request: POST {api_base}/chat/completions (or /embeddings); Azure
{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...; `Authorization: Bearer <key>`
(Azure: `api-key`). One aiohttp session per event loop for operators' endpoints and one whose connector resolves
through the egress policy (credentials.egress.PolicyResolver) for calls under the tenant rule, so a connection
opened for an internal endpoint is never reused by a tenant-controlled call; no environment proxies, no cookies,
no redirects (a 3xx is an error).

Answers: a dict (non-streamed) or a stream of chunk dicts parsed from the SSE lines as they arrive; errors are
raised as the LiteLLM exception classes LiteLLM would raise (by status), with the upstream's message, so the
service maps, fails over and counts them for the breaker unchanged. Keys are only in the request headers: never
in a URL, an exception or a log line.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

import orjson
from django.conf import settings

from credentials.egress import EgressDenied, check_literal_host, tenant_rule_applies
from credentials.provider_rules import EXTRA_OPENAI_COMPATIBLE, HEADER_SETTINGS, setting_headers

WIRE_TYPES = frozenset({"openai", "azure", "hosted_vllm", "openai_like", "custom_openai", "lm_studio",
                        *EXTRA_OPENAI_COMPATIBLE})
OPENAI_BASE = "https://api.openai.com/v1"
IGNORED_SETTINGS = frozenset({"base_model"})  # Azure: the model behind a deployment, for LiteLLM's prices only
# OpenAI's reasoning models, whose parameters LiteLLM rewrites: they stay with LiteLLM (its own tests, by name)
_REASONING_OPENAI = re.compile(r"^(o[134]|gpt-5)", re.IGNORECASE)
_REASONING_AZURE = ("o1", "o3", "o4", "o_series/", "gpt-5")
_MAX_LINE = 2 ** 21  # one SSE line (a chunk): 2 MiB


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how one call goes: built per call from the resolved credential (it holds the key: no repr)."""

    provider: str  # the provider type (for the exception's llm_provider)
    model: str  # the model id as the provider knows it (Azure: the deployment, also in the path)
    base: str  # the URL the operation's path is appended to
    query: str  # "" or "?api-version=..."
    headers: dict = field(repr=False)

    def url(self, path: str) -> str:
        return f"{self.base}/{path}{self.query}"

    def __repr__(self):
        return f"Target(provider={self.provider!r}, base={self.base!r})"


def enabled() -> bool:
    return bool(getattr(settings, "GATEWAY_LEAN_LANE", False))


def target(provider_type: str, cred, model_id: str) -> Target | None:
    """The lane's request for this model and resolved credential, or None: LiteLLM serves the call."""
    if provider_type not in WIRE_TYPES or not enabled():
        return None
    extra = cred.settings.keys() - HEADER_SETTINGS.keys() - IGNORED_SETTINGS if cred.settings else ()
    if extra:
        return None
    key = cred.api_key
    if provider_type == "azure":
        deployment = cred.deployment_name or model_id
        base = (cred.api_base or "").rstrip("/")
        if (not key or not base or not cred.api_version or urlsplit(base).path
                or _reasoning_azure(deployment, cred.settings.get("base_model"))):
            return None
        return Target(provider_type, deployment, f"{base}/openai/deployments/{quote(deployment, safe='')}",
                      "?" + urlencode({"api-version": cred.api_version}),
                      {"api-key": key, "Content-Type": "application/json"})
    base = cred.api_base or (OPENAI_BASE if provider_type == "openai" else None)
    if not base or (provider_type in ("openai", *EXTRA_OPENAI_COMPATIBLE) and _REASONING_OPENAI.match(model_id)):
        return None
    headers = {"Authorization": f"Bearer {key or 'none'}", "Content-Type": "application/json"}
    headers.update(setting_headers(cred.settings))
    return Target(provider_type, model_id, base.rstrip("/"), "", headers)


def _reasoning_azure(deployment: str, base_model: str | None) -> bool:
    names = f"{deployment} {base_model or ''}".lower()
    return any(marker in names for marker in _REASONING_AZURE)


# --- the invokes (service.Operation.lean) ----------------------------------------------------------------------

async def chat(body: dict, lane: Target):
    """POST chat/completions: the answer as a dict, or (body["stream"]) a ChunkStream."""
    if body.get("stream"):
        response = await _post(lane, "chat/completions", body, stream=True)
        return ChunkStream(response, lane)
    return await _post(lane, "chat/completions", body)


async def embedding(body: dict, lane: Target) -> dict:
    return await _post(lane, "embeddings", body)


def _payload(body: dict, lane: Target) -> bytes:
    return orjson.dumps({"model": lane.model, **body})


async def _post(lane: Target, path: str, body: dict, *, stream: bool = False):
    """Send one request; a dict (non-streamed) or the open response (a stream), else a LiteLLM exception."""
    import aiohttp

    url = lane.url(path)
    strict = tenant_rule_applies()
    timeout = settings.GATEWAY_TIMEOUT
    try:
        if strict:
            check_literal_host(urlsplit(url).hostname or "")
        response = await _session(strict).post(
            url, data=_payload(body, lane), headers=lane.headers, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout))
    except asyncio.TimeoutError as exc:
        raise _timeout(lane) from exc
    except (aiohttp.ClientError, OSError, EgressDenied, ValueError) as exc:
        raise _unreachable(lane, exc) from exc
    if response.status != 200:
        raise await _status_error(response, lane)
    if stream:
        return response
    try:
        raw = await response.read()
    except asyncio.TimeoutError as exc:
        raise _timeout(lane) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise _unreachable(lane, exc) from exc
    data = _json(raw)
    if not isinstance(data, dict):
        raise _malformed(lane, "The provider's answer is not a JSON object.")
    return _chat_answer(data) if path == "chat/completions" else _no_nulls(data)


def _json(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


# Answers as LiteLLM hands them on (dumped without None fields): the API's shapes (providers.gateway.shapes) put back
# the fields OpenAI's schema requires even when null; an optional field sent as null (system_fingerprint,
# tool_calls, ...) is dropped, at the levels where the schema has them.
def _no_nulls(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None} if None in data.values() else data


def _chat_answer(data: dict, part: str = "message") -> dict:
    data = _no_nulls(data)
    choices = data.get("choices")
    if choices:
        for i, choice in enumerate(choices):
            if isinstance(choice, dict):
                choice = choices[i] = _no_nulls(choice)
                inner = choice.get(part)
                if isinstance(inner, dict):
                    choice[part] = _no_nulls(inner)
    return data


def _chat_chunk(chunk: dict) -> dict:
    return _chat_answer(chunk, "delta")


class ChunkStream:
    """The chunks of a streamed answer as dicts, parsed from the upstream's SSE lines as they arrive. `chunks` keeps
    the usage chunk as the provider sent it (its reported cost: usage.stream_reported_cost); `aclose` drops the
    connection (the client went away)."""

    __slots__ = ("_response", "_lane", "_lines", "_sent", "_done", "chunks")

    def __init__(self, response, lane: Target):
        self._response, self._lane = response, lane
        self._lines = response.content
        self._sent = self._done = False
        self.chunks: list[dict] = []

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        import aiohttp

        while not self._done:
            try:
                line = await self._lines.readline()
            except asyncio.TimeoutError as exc:
                self._response.close()
                raise _timeout(self._lane) from exc
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                self._response.close()
                raise _unreachable(self._lane, exc, broken=True) from exc
            if not line:  # the end of the body
                self._done = True
                self._response.release()
                if not self._sent:  # nothing came: the service ends the stream as malformed, as with LiteLLM
                    return {"choices": []}
                break
            if not line.startswith(b"data:"):
                continue  # blank lines, comments, event names, a body that is not SSE
            data = line[5:].strip()
            if data == b"[DONE]":
                self._done = True
                self._response.release()
                break
            chunk = _json(data)
            if not isinstance(chunk, dict):
                self._response.close()
                raise _malformed(self._lane, "The provider sent a chunk that is not a JSON object.")
            if "error" in chunk and "choices" not in chunk:
                self._response.close()
                raise _in_band_error(chunk, self._lane)
            self._sent = True
            if usage := chunk.get("usage"):
                self.chunks = [{"usage": dict(usage)}]
            return _chat_chunk(chunk)
        raise StopAsyncIteration

    async def aclose(self):
        self._response.close()


# --- sessions --------------------------------------------------------------------------------------------------

_sessions: dict = {}  # event loop -> [open session, strict session]


def _session(strict: bool):
    loop = asyncio.get_running_loop()
    pair = _sessions.get(loop)
    if pair is None:
        for old in [lp for lp in _sessions if lp.is_closed()]:
            del _sessions[old]  # sessions of a finished loop (tests): nothing can use them any more
        pair = _sessions[loop] = [None, None]
    session = pair[strict]
    if session is None or session.closed:
        session = pair[strict] = _new_session(strict)
    return session


def _new_session(strict: bool):
    from aiohttp import ClientSession, DummyCookieJar, TCPConnector

    from credentials.egress import PolicyResolver

    connector = TCPConnector(resolver=PolicyResolver() if strict else None, limit=1000, limit_per_host=500,
                             keepalive_timeout=15, ttl_dns_cache=300)
    # read_bufsize bounds one SSE line (a chunk) at twice its size
    return ClientSession(connector=connector, cookie_jar=DummyCookieJar(), trust_env=False, read_bufsize=_MAX_LINE // 2)


async def close_sessions():
    """Close this event loop's sessions (at shutdown)."""
    for session in _sessions.pop(asyncio.get_running_loop(), None) or ():
        if session is not None:
            await session.close()


# --- errors: LiteLLM's exception classes -----------------------------------------------------------------------

def _prefix(lane: Target) -> str:
    return "AzureException - " if lane.provider == "azure" else "OpenAIException - "


def _fake_response(status: int, headers: dict | None = None):
    import httpx

    return httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", "https://upstream.invalid"))


def _timeout(lane: Target):
    from providers.llm import litellm

    return litellm.Timeout(f"{_prefix(lane)}Request timed out.", model=lane.model, llm_provider=lane.provider)


def _unreachable(lane: Target, exc: BaseException | None, *, broken: bool = False):
    from providers.llm import litellm

    what = "The connection broke during the answer" if broken else "Connection error"
    detail = f": {type(exc).__name__}" if exc is not None else ""
    return litellm.APIConnectionError(f"{_prefix(lane)}{what}{detail}.", llm_provider=lane.provider, model=lane.model)


def _malformed(lane: Target, message: str):
    from providers.llm import litellm

    return litellm.APIError(500, f"{_prefix(lane)}{message}", llm_provider=lane.provider, model=lane.model)


def _error_text(data, raw: bytes) -> tuple[str, str]:
    """(message, code) of an OpenAI-style error body ({"error": {...}}, vLLM's {"message": ...}), else the text."""
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or ""
            return str(message), str(error.get("code") or error.get("type") or "")
        if isinstance(error, str):
            return error, ""
    return raw[:2000].decode("utf-8", "replace").strip(), ""


async def _status_error(response, lane: Target):
    """The LiteLLM exception for an answer other than 200 (the response is released here)."""
    status = response.status
    headers = {"retry-after": response.headers["Retry-After"]} if "Retry-After" in response.headers else {}
    try:
        raw = b"" if 300 <= status < 400 else await response.content.read(65536)
    except Exception:  # noqa: BLE001 - the status says enough
        raw = b""
    response.close()
    message, code = _error_text(_json(raw) if raw else None, raw)
    return status_exception(status, message or f"HTTP {status}", code, lane, headers)


def _in_band_error(chunk: dict, lane: Target):
    message, code = _error_text(chunk, b"")
    error = chunk.get("error")
    status = error.get("code") if isinstance(error, dict) else None
    return status_exception(status if isinstance(status, int) and 400 <= status < 600 else 500,
                            message or "The provider reported an error.", str(code), lane, {})


_CONTEXT_WINDOW = ("context_length_exceeded", "maximum context length", "model's maximum context limit")
_CONTENT_POLICY = ("content_policy_violation", "content_filter", "content management policy")


def status_exception(status: int, message: str, code: str, lane: Target, headers: dict):
    """The LiteLLM exception class for an upstream status (the classes `_map_upstream` and the breaker know)."""
    from providers.llm import litellm

    text = f"{_prefix(lane)}{message}"
    kw = {"llm_provider": lane.provider, "model": lane.model}
    lowered = f"{code} {message}".lower()
    if status in (400, 422):
        if any(marker in lowered for marker in _CONTEXT_WINDOW):
            return litellm.ContextWindowExceededError(text, **kw)
        if any(marker in lowered for marker in _CONTENT_POLICY):
            return litellm.ContentPolicyViolationError(text, **kw)
        return litellm.BadRequestError(text, **kw)
    if status == 401:
        return litellm.AuthenticationError(text, **kw)
    if status == 403:
        return litellm.PermissionDeniedError(text, response=_fake_response(status), **kw)
    if status == 404:
        return litellm.NotFoundError(text, **kw)
    if status == 429:
        exc = litellm.RateLimitError(text, response=_fake_response(status, headers), **kw)
        exc.litellm_response_headers = headers
        return exc
    if status == 503:
        return litellm.ServiceUnavailableError(text, **kw)
    if status >= 500:
        return litellm.InternalServerError(text, **kw)
    return litellm.APIError(status, text, **kw)  # 3xx (never followed), 413 and the rest
