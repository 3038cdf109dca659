"""The completion service: every model call of the gateway runs through here.

request -> tenant (from the API key) -> requested model (alias, model id, or <prefix>/<model id>) -> usable
candidate models (healthy first) -> budget, rate limit -> credential (credential resolution; tenant keys
never fall back to anyone else's) -> litellm.acompletion / aembedding -> usage record.

On a provider failure that is not the caller's fault (429, 5xx, timeout, connection, rejected credential,
missing credential), the next model of the same alias is tried. Errors carry OpenAI's JSON shape and never
a key: upstream texts are masked and reduced to their first line.

Keys travel only to the endpoint credential resolution bound them to (`_credential`), under the egress rule it
chose (`egress_scope`); the caller's body contributes only fields of the public API schema (request_schema), and
a model's stored settings only call parameters (`model_settings`). See providers.llm for why keys go in per-call
headers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from credentials.crypto import DecryptionError
from credentials.egress import egress_denied, egress_scope
from credentials.masking import secret_scope
from credentials.resolution import CredentialError, CredentialMissing, CredentialUndecryptable
from tenants.models import Tenant, TenantApiKey

from providers.gateway.breaker import provider_fault
from providers.gateway.limits import Denied
from providers.gateway.catalog import Snapshot, qualified_name, split_prefix
from providers.choices import ModelType
from tenants.request_id import current_request_id

from providers.gateway import shapes
from providers.gateway.request_schema import NOT_FORWARDED, RequestInvalid, validate_request
from providers.gateway.shapes import public_name
from providers.models import AIModel
from providers.provider_types import litellm_model_name
from providers.services import model_settings, provider_credential
from providers.gateway.usage import (
    CLIENT_CLOSED,
    CLIENT_CLOSED_HTTP_STATUS,
    ERROR,
    OK,
    REFUSED,
    cost_of,
    estimate_tokens,
)

if TYPE_CHECKING:
    from providers.gateway.core import Gateway

log = logging.getLogger("eneo.gateway")


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, type_: str, code: str | None = None, param: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Caller:
    tenant: Tenant
    api_key: TenantApiKey
    snapshot: Snapshot
    gateway: Gateway  # this process's catalog, limiter, breaker and usage writer


def _available(models: list[AIModel], limit: int = 20) -> str:
    names = sorted({public_name(m) for m in models})
    if not names:
        return "No models are enabled for your tenant."
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return "Available: " + ", ".join(names[:limit]) + more + ". GET /v1/models lists them."


async def resolve_models(caller: Caller, requested: str, *, model_type: str) -> list[AIModel]:
    if not isinstance(requested, str) or not requested.strip():
        raise GatewayError(400, "'model' is required.", type_="invalid_request_error", param="model")
    tm = await caller.gateway.catalog.tenant_models(caller.snapshot, caller.tenant)
    name = requested.strip()
    candidates = tm.by_name.get(name)
    if not candidates:
        prefix, rest = split_prefix(name)
        if prefix is None:  # no prefix = the default provider
            default = litellm_model_name(settings.DEFAULT_PROVIDER_TYPE, name)
            candidates = tm.by_name.get(default)
    if candidates:
        wanted = [m for m in candidates if m.model_type == model_type]
        if wanted:
            return wanted
        raise GatewayError(400, f"Model '{name[:100]}' is a {candidates[0].model_type} model and cannot serve "
                                f"this endpoint.", type_="invalid_request_error", param="model",
                           code="model_type_mismatch")
    owners = caller.snapshot.known_names.get(name, set())
    if None in owners or caller.tenant.pk in owners:
        raise GatewayError(403, f"Model '{name[:100]}' is not enabled for your tenant (or is inactive). "
                                f"{_available(tm.models)}", type_="permission_error", param="model",
                           code="model_not_allowed")
    raise GatewayError(404, f"Model not available: '{name[:100]}'. {_available(tm.models)}",
                       type_="invalid_request_error", param="model", code="model_not_found")


def _credential(caller: Caller, model: AIModel):
    provider = model.provider
    return provider_credential(
        provider=provider, tenant=caller.tenant,
        active_key=caller.snapshot.provider_keys.get(provider.pk),
        tenant_credential=caller.snapshot.credentials.get((caller.tenant.pk, provider.provider_type)),
    )


def _call_params(model: AIModel, cred) -> dict:
    """LiteLLM arguments for this model: the model's stored call settings, then name, endpoint and key (from
    the credential only), timeouts."""
    from providers.llm import call_kwargs

    params = model_settings(model)
    params.update({"model": qualified_name(model), **call_kwargs(model.provider.provider_type, cred),
                   "timeout": settings.GATEWAY_TIMEOUT, "num_retries": 0, "max_retries": 0, "drop_params": True})
    return params


def _map_upstream(exc: Exception, model: AIModel) -> tuple[GatewayError, bool]:
    """(error for the caller, may another model be tried)."""
    from providers.llm import litellm, upstream_text

    label = public_name(model)
    denied = egress_denied(exc)
    if denied is not None:
        return GatewayError(502, f"The endpoint of the provider of '{label}' is not allowed: {denied}",
                            type_="api_error", code="endpoint_not_allowed"), True
    first_line = upstream_text(exc)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return GatewayError(400, f"The request is too long for model '{label}': {first_line}",
                            type_="invalid_request_error", code="context_length_exceeded"), False
    if isinstance(exc, litellm.ContentPolicyViolationError):
        return GatewayError(400, f"The provider refused the content: {first_line}", type_="invalid_request_error",
                            code="content_policy_violation"), False
    if isinstance(exc, litellm.RateLimitError):
        retry = None
        response = getattr(exc, "response", None)
        headers = getattr(exc, "litellm_response_headers", None) or (response.headers if response is not None else {})
        try:
            retry = int(float(headers.get("retry-after")))
        except (TypeError, ValueError, AttributeError):
            retry = None
        return GatewayError(429, f"The provider of '{label}' is rate limiting requests. Retry later.",
                            type_="rate_limit_error", code="upstream_rate_limited", retry_after=retry or 1), True
    if isinstance(exc, litellm.Timeout):
        return GatewayError(504, f"The provider of '{label}' did not answer in time.", type_="api_error",
                            code="upstream_timeout"), True
    if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
        return GatewayError(502, f"The provider of '{label}' rejected the configured credential. An operator "
                                 f"must check the API key.", type_="api_error", code="upstream_auth_failed"), True
    if isinstance(exc, litellm.NotFoundError):
        return GatewayError(502, f"The provider does not know model '{model.model_id}'.", type_="api_error",
                            code="upstream_model_not_found"), True
    if isinstance(exc, litellm.BadRequestError):
        return GatewayError(400, f"The provider rejected the request: {first_line}", type_="invalid_request_error",
                            code="upstream_bad_request"), False
    if isinstance(exc, litellm.APIConnectionError):
        return GatewayError(502, f"Could not reach the provider of '{label}'.", type_="api_error",
                            code="upstream_unreachable"), True
    return GatewayError(502, f"The provider of '{label}' failed: {first_line}", type_="api_error",
                        code="upstream_error"), True


def _credential_error(exc: Exception) -> GatewayError:
    if isinstance(exc, (CredentialUndecryptable, DecryptionError)):
        return GatewayError(503, str(exc), type_="api_error", code="credential_undecryptable")
    code = "credential_missing" if isinstance(exc, CredentialMissing) else "credential_invalid"
    return GatewayError(403, str(exc), type_="permission_error", code=code)


async def _check_budget(caller: Caller):
    budget = caller.tenant.monthly_budget
    if budget is None:
        return
    spent = await caller.gateway.usage.month_spend(caller.tenant)
    if spent >= budget:
        raise GatewayError(429, f"Your tenant's monthly budget ({budget}) is used up ({spent:.4f} spent).",
                           type_="insufficient_quota", code="budget_exceeded")


def _usage(caller: Caller, model: AIModel | None, requested: str, endpoint: str, started: float, *, status=OK,
           http_status=200, error_type="", tokens_in=0, tokens_out=0, reported_cost=None, streamed=False,
           ttft_ms=None, estimated=False):
    """One usage record into the batched writer. Tokens the upstream processed cost the same whatever the status
    (a stream cut short, a client gone): the provider bills them."""
    tokens_in, tokens_out = tokens_in or 0, tokens_out or 0
    caller.gateway.usage.record((
        caller.tenant.pk, caller.api_key.pk, model.provider_id if model else None, model.pk if model else None,
        str(requested)[:200], endpoint, tokens_in, tokens_out,
        cost_of(model, tokens_in, tokens_out, reported_cost) if model is not None else Decimal(0),
        int((time.monotonic() - started) * 1000), ttft_ms, status, http_status, error_type[:60], streamed,
        timezone.now(), estimated, current_request_id.get(),
    ))


class _Ledger:
    """The usage record of one call in the making: every call that reached an upstream, or was refused for a known
    tenant, writes exactly one (statuses: providers.gateway.usage)."""

    __slots__ = ("caller", "requested", "endpoint", "streamed", "started", "tried", "closed")

    def __init__(self, caller: Caller, requested, endpoint: str, *, streamed: bool = False):
        self.caller, self.requested, self.endpoint, self.streamed = caller, requested, endpoint, streamed
        self.started = time.monotonic()
        self.tried: list[AIModel] = []  # the models whose upstream was called, in order
        self.closed = False  # the client went away before its answer was sent

    def write(self, model: AIModel | None, **fields):
        _usage(self.caller, model, self.requested, self.endpoint, self.started, streamed=self.streamed, **fields)

    def failed(self, error: GatewayError):
        """An error answer: `error` when an upstream was called (the last one tried), else `refused`."""
        self.write(self.tried[-1] if self.tried else None, status=ERROR if self.tried else REFUSED,
                   http_status=error.status, error_type=error.code or error.type)

    def answered(self, model: AIModel, usage: dict):
        """A non-streamed answer, with the provider's usage; `client_closed` if nobody was there to get it."""
        closed = self.closed
        self.write(model, status=CLIENT_CLOSED if closed else OK,
                   http_status=CLIENT_CLOSED_HTTP_STATUS if closed else 200,
                   tokens_in=usage.get("prompt_tokens"), tokens_out=usage.get("completion_tokens"))


_orphans: set[asyncio.Task] = set()  # upstream calls whose client went away: kept alive until they are recorded


def _orphan_done(task: asyncio.Task):
    _orphans.discard(task)
    if not task.cancelled() and not isinstance(task.exception(), (GatewayError, type(None))):
        log.warning("gateway: a call whose client went away failed: %r", task.exception())


async def _even_if_closed(ledger: _Ledger, work):
    """Await `work` (a non-streamed upstream call and its record) so that it ends even if the client goes away.
    The /v1 lane then cancels the request's task, but the provider bills the call all the same: `work` runs on
    in a task of its own and records the tokens the provider reports, as `client_closed`."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        ledger.closed = True
        if not task.done():
            _orphans.add(task)
            task.add_done_callback(_orphan_done)
        raise


def _breaker_key(caller: Caller, model: AIModel, cred) -> tuple:
    """Failures with a tenant's own credential pause only that tenant's use of the provider; failures with a
    shared key pause it for everyone who uses that key."""
    return (model.provider_id, caller.tenant.pk if cred.source == "tenant" else None)


async def _attempts(caller: Caller, candidates: list[AIModel], call, *, hold: bool = False):
    """Try candidates in order; `call(model, params)` does the upstream call. Returns (model, result, lease): the
    provider's concurrency slot is released when this returns, raises or is cancelled, unless `hold` (a stream):
    then the caller owns the lease and releases it when the stream ends."""
    first_error: GatewayError | None = None
    for model in candidates:
        try:
            cred = _credential(caller, model)
        except (CredentialError, DecryptionError) as exc:
            first_error = first_error or _credential_error(exc)
            continue
        breaker_key = _breaker_key(caller, model, cred)
        if not caller.gateway.breaker.allows(breaker_key):
            first_error = first_error or GatewayError(
                503, f"The provider of '{public_name(model)}' is failing; calls to it are paused for "
                     f"up to {settings.GATEWAY_BREAKER_SECONDS:g} s.", type_="api_error", code="provider_paused",
                retry_after=int(settings.GATEWAY_BREAKER_SECONDS))
            continue
        lease = await caller.gateway.limiter.acquire(model.provider)
        if isinstance(lease, Denied):
            first_error = first_error or GatewayError(429, f"Too many requests: {lease.reason}.",
                                                      type_="rate_limit_error", code="rate_limited",
                                                      retry_after=lease.retry_after)
            continue
        try:
            params = _call_params(model, cred)
            with secret_scope(cred.api_key), egress_scope(tenant_controlled=cred.tenant_controlled):
                try:
                    result = await call(model, params)
                    caller.gateway.breaker.success(breaker_key)
                    if hold:
                        held, lease = lease, None
                        return model, result, held
                    return model, result, None
                except GatewayError:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped, masked, maybe failed over
                    error, retryable = _map_upstream(exc, model)
                    if provider_fault(exc):
                        caller.gateway.breaker.failure(breaker_key)
                    log.info("gateway: %s via provider %s failed: %s", model.model_id, model.provider_id,
                             error.code)
                    if not retryable:
                        raise error from None
                    first_error = first_error or error
        finally:
            if lease is not None:
                await lease.release()
    raise first_error or GatewayError(502, "No provider could serve the request.", type_="api_error")


def _forwarded(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "model" and k not in NOT_FORWARDED}


def _validated(endpoint: str, body: dict, raw: bytes | None):
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > settings.GATEWAY_MAX_MESSAGES:
        raise GatewayError(400, f"Too many messages: {len(messages)} (at most {settings.GATEWAY_MAX_MESSAGES}).",
                           type_="invalid_request_error", param="messages", code="invalid_value")
    try:
        validate_request(endpoint, body, raw)
    except RequestInvalid as exc:
        raise GatewayError(400, exc.message, type_="invalid_request_error", param=exc.param, code=exc.code) from None


async def chat_completion(caller: Caller, body: dict, raw: bytes | None = None):
    """Non-streaming: returns the response dict. Streaming: returns an async iterator of SSE bytes.

    `body` holds only what the caller sent (validated here against the public API schema); `raw` is the request
    body as received, if at hand."""
    from providers.llm import litellm

    stream = bool(body.get("stream"))
    ledger = _Ledger(caller, body.get("model"), "chat.completions", streamed=stream)
    requested = ledger.requested
    try:
        _validated("chat.completions", body, raw)
        candidates = await resolve_models(caller, requested, model_type=ModelType.INFERENCE)
        await _check_budget(caller)
        call_body = _forwarded(body)
        if not call_body.get("messages"):
            raise GatewayError(400, "'messages' must be a non-empty list.", type_="invalid_request_error",
                               param="messages")
    except GatewayError as error:
        ledger.failed(error)  # refused
        raise
    wants_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else True
    if stream:
        call_body["stream_options"] = {"include_usage": True}

    async def call(model, params):
        ledger.tried.append(model)
        response = await litellm.acompletion(**call_body, **params)
        if not stream:
            return response
        iterator = response.__aiter__()
        first = await iterator.__anext__()  # fail over while nothing was sent yet
        return iterator, first

    if not stream:
        return await _even_if_closed(ledger, _complete(ledger, candidates, call, shapes.chat_completion))
    try:
        model, result, lease = await _attempts(caller, candidates, call, hold=stream)
    except GatewayError as error:
        ledger.failed(error)
        raise
    except asyncio.CancelledError:  # the client went away before the stream began: the upstream had the prompt
        if ledger.tried:
            model = ledger.tried[-1]
            ledger.write(model, status=CLIENT_CLOSED, http_status=CLIENT_CLOSED_HTTP_STATUS, estimated=True,
                         tokens_in=await estimate_tokens(model.model_id, messages=call_body["messages"]))
        raise
    iterator, first = result
    return _sse(ledger, model, iterator, first, wants_usage, lease, call_body["messages"])


async def _complete(ledger: _Ledger, candidates: list[AIModel], call, shape) -> dict:
    """A non-streamed answer (chat or embeddings): the upstream call, then its record; `shape` puts the answer
    in the spec's shape (providers.gateway.shapes)."""
    caller = ledger.caller
    try:
        model, response, _ = await _attempts(caller, candidates, call)
    except GatewayError as error:
        ledger.failed(error)
        raise
    data = response.model_dump(exclude_none=True)
    data.pop("_hidden_params", None)
    usage = data.get("usage") or {}
    usage.pop("cost", None)  # LiteLLM's estimate; our cost comes from the model's prices
    ledger.answered(model, usage)
    await caller.gateway.limiter.add_tokens(model.provider,
                                            usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
    return shape(data, ledger.requested)


def _is_usage_only(data: dict) -> bool:
    return all(not c.get("delta") and not c.get("finish_reason") for c in data.get("choices") or [])


def _collect(delta: dict, sent: list):
    """The generated text of a chunk's delta (content, reasoning, tool calls), for counting it if need be."""
    for key in ("content", "reasoning_content"):
        if text := delta.get(key):
            sent.append(text)
    for tool_call in delta.get("tool_calls") or ():
        function = tool_call.get("function") or {}
        sent.append(f"{function.get('name') or ''}{function.get('arguments') or ''}")


async def _close_upstream(iterator):
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - the connection is dropped either way
            pass


async def _sse(ledger: _Ledger, model, iterator, first, wants_usage, lease, messages):
    """Relay chunks as OpenAI sends them: `data: {chunk}` lines, a usage-only chunk with empty choices when the
    caller asked for usage, then `data: [DONE]`. The provider's concurrency `lease` ends with the stream (done,
    failed, or the client went away and the generator was closed).

    The record counts what was delivered: the provider's usage chunk, or, when none came (the client went away,
    the stream broke, the provider sends none), LiteLLM's count of the prompt and of the text sent (estimated).
    A stream in which nothing came from the upstream (an unreadable body: LiteLLM then yields only its own
    closing chunks) ends with an error event, recorded as an upstream error."""
    caller = ledger.caller
    ttft = int((time.monotonic() - ledger.started) * 1000)
    usage = {}
    sent: list[str] = []  # the generated text relayed so far (counted only if the provider reports no usage)
    answered = False  # a chunk carried something from the upstream
    status, error_type, http_status = OK, "", 200
    try:
        chunk = first
        while True:
            data = shapes.chat_chunk(chunk.model_dump(exclude_none=True), ledger.requested)
            chunk_usage = data.pop("usage", None)
            if chunk_usage:
                chunk_usage.pop("cost", None)
                usage = chunk_usage
            if chunk_usage and _is_usage_only(data):
                if wants_usage:
                    yield f"data: {json.dumps({**data, 'choices': [], 'usage': chunk_usage}, separators=(',', ':'))}\n\n".encode()
            else:
                for choice in data.get("choices") or ():
                    if delta := choice.get("delta"):
                        answered = True
                        _collect(delta, sent)
                yield f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
        if not answered and not usage:
            raise GatewayError(502, f"The provider of '{public_name(model)}' sent an answer that could "
                                    f"not be read.", type_="api_error", code="upstream_malformed")
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: the lane cancelled us, or closed us
        status, http_status = CLIENT_CLOSED, CLIENT_CLOSED_HTTP_STATUS
        raise
    except Exception as exc:  # noqa: BLE001 - the stream already started: report in-band, masked
        error = exc if isinstance(exc, GatewayError) else _map_upstream(exc, model)[0]
        status, error_type, http_status = ERROR, error.code or "stream_error", error.status
        yield f"data: {json.dumps(error.body())}\n\n".encode()
    finally:
        estimated = not usage and bool(sent or status == CLIENT_CLOSED)
        if estimated:
            usage = {"prompt_tokens": await estimate_tokens(model.model_id, messages=messages),
                     "completion_tokens": await estimate_tokens(model.model_id, text="".join(sent))}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        ledger.write(model, status=status, http_status=http_status, error_type=error_type,
                     tokens_in=usage.get("prompt_tokens"), tokens_out=usage.get("completion_tokens"), ttft_ms=ttft,
                     estimated=estimated)
        if status == CLIENT_CLOSED:
            await _close_upstream(iterator)
        await caller.gateway.limiter.add_tokens(model.provider, usage.get("total_tokens") or 0)
        await lease.release()


async def embeddings(caller: Caller, body: dict, raw: bytes | None = None) -> dict:
    from providers.llm import litellm

    ledger = _Ledger(caller, body.get("model"), "embeddings")
    try:
        _validated("embeddings", body, raw)
        candidates = await resolve_models(caller, ledger.requested, model_type=ModelType.EMBEDDING)
        await _check_budget(caller)
        inp = body.get("input")
        if not (isinstance(inp, str) and inp) and not (isinstance(inp, list) and inp):
            raise GatewayError(400, "'input' must be a non-empty string or list.", type_="invalid_request_error",
                               param="input")
    except GatewayError as error:
        ledger.failed(error)  # refused
        raise
    call_body = _forwarded(body)

    async def call(model, params):
        ledger.tried.append(model)
        return await litellm.aembedding(**call_body, **params)

    return await _even_if_closed(ledger, _complete(ledger, candidates, call, shapes.embedding_list))


async def models_for(caller: Caller) -> list[dict]:
    """GET /v1/models: what this caller may use (aliases and qualified model names)."""
    tm = await caller.gateway.catalog.tenant_models(caller.snapshot, caller.tenant)
    seen: dict[str, dict] = {}
    for m in tm.models:
        owner = m.provider.name
        for name in filter(None, (m.alias, qualified_name(m))):
            seen.setdefault(name, {"id": name, "object": "model", "created": int(m.created_at.timestamp()),
                                   "owned_by": owner, "type": m.model_type})
    return sorted(seen.values(), key=lambda d: d["id"])

