"""The completion service: every model call of the gateway runs through here.

request -> tenant (from the API key) -> requested model (alias, model id, or <prefix>/<model id>) -> usable
candidate models (healthy first) -> budget, rate limit -> credential (credential resolution; tenant keys
never fall back to anyone else's) -> litellm.acompletion / aembedding, or for OpenAI-wire providers the lean lane
(providers.gateway.lean: our own HTTP client, same pipeline around it) -> usage record.

On a provider failure that is not the caller's fault (429, 5xx, timeout, connection, rejected credential,
missing credential), the next model of the same alias is tried. Errors carry OpenAI's JSON shape and never
a key: upstream texts are masked and reduced to their first line.

Keys travel only to the endpoint credential resolution bound them to (`_credential`), under the egress rule it
chose (`egress_scope`); the caller's body contributes only fields of the public API schema (request_schema), and
a model's stored settings only call parameters (`model_settings`). See providers.llm for why keys go in per-call
headers.
"""
from __future__ import annotations

import abc
import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable
from decimal import Decimal

from django.conf import settings

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

from providers.gateway import lean, shapes
from providers.gateway.request_schema import NOT_FORWARDED, REQUEST_ONLY, RequestInvalid, validate_request
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
    stream_reported_cost,
    usage_row,
)

if TYPE_CHECKING:
    from providers.gateway.core import Gateway

log = logging.getLogger("eneo.gateway")
LEAN = "lean"  # _call_params: the lean lane's target instead of LiteLLM's arguments


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
    spent: Decimal | None = None  # a budgeted tenant's month spend at the budget check, plus this call's cost


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


def _call_params(model: AIModel, cred, op: Operation | None = None) -> dict:
    """LiteLLM arguments for this model: name, endpoint and key (from the credential only), timeouts; or, when `op`
    has a lean lane and it takes this call (providers.gateway.lean), only {LEAN: its target}."""
    if op is not None and op.lean is not None:
        target = lean.target(model.provider.provider_type, cred, model.model_id)
        if target is not None:
            return {LEAN: target}
    from providers.llm import call_kwargs

    return {**call_kwargs(model.provider.provider_type, cred, qualified_name(model)),
            "timeout": settings.GATEWAY_TIMEOUT, "num_retries": 0, "max_retries": 0, "drop_params": True}


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
    spent = caller.spent = await caller.gateway.usage.month_spend(caller.tenant)
    if spent >= budget:
        raise GatewayError(429, f"Your tenant's monthly budget ({budget}) is used up ({spent:.4f} spent).",
                           type_="insufficient_quota", code="budget_exceeded")


def _usage(caller: Caller, model: AIModel | None, requested: str, endpoint: str, started: float, *, status=OK,
           http_status=200, error_type="", tokens_in=0, tokens_out=0, reported_cost=None, streamed=False,
           ttft_ms=None, estimated=False):
    """One usage record into the batched writer. Tokens the upstream processed cost the same whatever the status
    (a stream cut short, a client gone): the provider bills them."""
    tokens_in, tokens_out = tokens_in or 0, tokens_out or 0
    cost = cost_of(model, tokens_in, tokens_out, reported_cost) if model is not None else Decimal(0)
    caller.gateway.usage.record(usage_row(
        caller.tenant.pk, caller.api_key.pk, requested, endpoint, status=status, http_status=http_status,
        request_id=current_request_id.get(), model=model, tokens_in=tokens_in, tokens_out=tokens_out, cost=cost,
        latency_ms=int((time.monotonic() - started) * 1000), ttft_ms=ttft_ms, error_type=error_type,
        streamed=streamed, estimated=estimated), budgeted=caller.spent is not None)
    if caller.spent is not None:
        caller.spent += cost


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
                   tokens_in=usage.get("prompt_tokens"), tokens_out=usage.get("completion_tokens"),
                   reported_cost=usage.get("cost"))


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


async def _attempts(caller: Caller, candidates: list[AIModel], call, *, hold: bool = False,
                    op: Operation | None = None):
    """Try candidates in order; `call(model, params)` does the upstream call (params: `_call_params` for `op`).
    Returns (model, result, lease): the provider's concurrency slot is released when this returns, raises or is
    cancelled, unless `hold` (a stream): then the caller owns the lease and releases it when the stream ends."""
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
        if cred.source == "provider_key" and (key := caller.snapshot.provider_keys.get(model.provider_id)):
            caller.gateway.usage.provider_key_used(key.pk)  # the key credential resolution took (last_used_at)
        try:
            params = _call_params(model, cred, op)
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
                        caller.gateway.breaker.failure(breaker_key, (model.provider.public_id,
                                                                     caller.tenant.slug if breaker_key[1] else ""))
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


# --- one pipeline for every /v1 endpoint -----------------------------------------------------------------------

class StreamReader(abc.ABC):
    """How one endpoint's stream is relayed: `frame` turns an upstream chunk into the bytes sent to the client
    (None: nothing to send) and notes what it carried: `usage` (prompt_tokens / completion_tokens), whether the
    upstream `answered` anything, the text `sent` so far (counted when the provider reports no usage)."""

    done: bytes | None = b"data: [DONE]\n\n"  # the stream's last event, if the format has one

    def __init__(self, body: dict, requested: str):
        self.body, self.requested = body, requested
        self.usage: dict = {}
        self.answered = False
        self.sent: list[str] = []
        self.failed = ""  # the upstream reported in-band that the call failed: its error code, for the ledger

    def prepare(self, call_body: dict) -> None:
        """Adjust the upstream call (e.g. ask for the usage chunk)."""

    @abc.abstractmethod
    def frame(self, chunk) -> bytes | None:
        """The bytes to send for one upstream chunk (None: nothing), noting usage, answered and sent."""

    def error_event(self, error: GatewayError) -> bytes:
        return f"data: {json.dumps(error.body())}\n\n".encode()


def sse(data: dict, event: str | None = None) -> bytes:
    """One server-sent event."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def dump(response) -> dict:
    """A LiteLLM response object as a plain dict, without None fields and LiteLLM's private ones."""
    data = response.model_dump(exclude_none=True) if hasattr(response, "model_dump") else dict(response)
    data.pop("_hidden_params", None)
    data.pop("_response_headers", None)
    return data


def openai_usage(data: dict) -> dict:
    """prompt_tokens / completion_tokens / total_tokens of an OpenAI-style answer, and `cost` when the provider
    reported one (usage.reported_cost); the cost is taken out of the answer."""
    usage = data.get("usage") or {}
    cost = usage.pop("cost", None)
    return usage if cost is None else {**usage, "cost": cost}


@dataclass(frozen=True)
class Operation:
    """One /v1 endpoint's part in `serve`."""

    endpoint: str  # the usage ledger's name and the request schema's (request_schema.py)
    model_type: str  # the models that serve it
    invoke: Callable[[dict, dict], Awaitable]  # (call body, call params) -> LiteLLM's answer or stream
    shape: Callable[[dict, str], dict]  # a non-streamed answer (dumped) -> the API's shape; `requested` names it
    usage: Callable[[dict], dict] = openai_usage  # prompt_tokens / completion_tokens of a dumped answer
    stream: type[StreamReader] | None = None  # None: the endpoint does not stream
    required: str | None = None  # a field that must not be empty
    prompt: Callable[[dict], tuple] = lambda body: (body.get("messages"), None)  # (messages, text), for estimates
    params_checked: str | None = None  # LiteLLM's request type whose supported parameters are enforced
    check: Callable[[dict], None] | None = None  # raises GatewayError for a request the endpoint cannot honour
    model_settings: bool = False  # the model's stored call settings apply
    lean: Callable[[dict, lean.Target], Awaitable] | None = None  # the lean lane's invoke, where it has one


def _supported(model: AIModel, request_type: str) -> frozenset | None:
    return _supported_by(qualified_name(model), request_type)


@functools.lru_cache(maxsize=4096)
def _supported_by(litellm_model: str, request_type: str) -> frozenset | None:
    """LiteLLM's list of the parameters a model takes: static data of the installed LiteLLM, looked up once per
    model name instead of on every call."""
    from providers.llm import litellm

    try:
        found = litellm.get_supported_openai_params(model=litellm_model, request_type=request_type)
    except Exception:  # noqa: BLE001 - a provider LiteLLM cannot tell about: nothing is refused
        return None
    return frozenset(found) if found else None


def _unsupported(op: Operation, model: AIModel, call_body: dict) -> list[str]:
    """The caller's parameters this model cannot honour (per LiteLLM's list of the provider's parameters)."""
    if op.params_checked is None:
        return []
    supported = _supported(model, op.params_checked)
    if supported is None:
        return []
    return [k for k in call_body if k not in REQUEST_ONLY and k not in supported]


def _able(op: Operation, candidates: list[AIModel], call_body: dict) -> list[AIModel]:
    """The candidates that can honour every parameter of the call, or drop what they cannot (the model's setting
    drop_unsupported_params); none: 400 naming the first parameter, so the caller never gets something other
    than it asked for without a word."""
    able, refused = [], None
    for model in candidates:
        unsupported = _unsupported(op, model, call_body)
        if not unsupported or model.drop_unsupported_params:
            able.append(model)
        elif refused is None:
            refused = (model, unsupported)
    if able:
        return able
    model, unsupported = refused
    raise GatewayError(400, f"Model '{public_name(model)}' does not support the parameter(s) {', '.join(unsupported)}. "
                            f"Leave them out, or ask an operator to let this model drop what it does not support.",
                       type_="invalid_request_error", param=unsupported[0], code="unsupported_parameter")


async def serve(caller: Caller, op: Operation, body: dict, raw: bytes | None = None):
    """Serve one /v1 call: a dict (the answer), or an async iterator of SSE bytes when it streams.

    `body` holds only what the caller sent (validated here against the endpoint's request schema); `raw` is the
    request body as received, if at hand."""
    stream = op.stream is not None and bool(body.get("stream"))
    ledger = _Ledger(caller, body.get("model"), op.endpoint, streamed=stream)
    try:
        _validated(op.endpoint, body, raw)
        if op.check is not None:
            op.check(body)
        candidates = await resolve_models(caller, ledger.requested, model_type=op.model_type)
        await _check_budget(caller)
        call_body = _forwarded(body)
        if op.required and not call_body.get(op.required):
            raise GatewayError(400, f"'{op.required}' must not be empty.", type_="invalid_request_error",
                               param=op.required, code="invalid_value")
        candidates = _able(op, candidates, call_body)
    except GatewayError as error:
        ledger.failed(error)  # refused
        raise
    reader = op.stream(body, ledger.requested) if stream else None
    if reader is not None:
        reader.prepare(call_body)

    async def call(model, params):
        ledger.tried.append(model)
        sent = call_body
        if model.drop_unsupported_params and (unsupported := _unsupported(op, model, call_body)):
            sent = {k: v for k, v in call_body.items() if k not in unsupported}
        if op.model_settings and (defaults := model_settings(model)):
            sent = {**defaults, **sent}  # the model's defaults; what the caller sent wins
        response = await (op.lean(sent, params[LEAN]) if LEAN in params else op.invoke(sent, params))
        if not stream:
            return response
        iterator = response.__aiter__()
        first = await iterator.__anext__()  # fail over while nothing was sent yet
        return iterator, first

    if not stream:
        return await _even_if_closed(ledger, _complete(ledger, op, candidates, call))
    try:
        model, result, lease = await _attempts(caller, candidates, call, hold=True, op=op)
    except GatewayError as error:
        ledger.failed(error)
        raise
    except asyncio.CancelledError:  # the client went away before the stream began: the upstream had the prompt
        if ledger.tried:
            model = ledger.tried[-1]
            messages, text = op.prompt(call_body)
            ledger.write(model, status=CLIENT_CLOSED, http_status=CLIENT_CLOSED_HTTP_STATUS, estimated=True,
                         tokens_in=await estimate_tokens(model.model_id, messages=messages, text=text))
        raise
    iterator, first = result
    return _relay(ledger, op, model, iterator, first, lease, reader, call_body)


async def _complete(ledger: _Ledger, op: Operation, candidates: list[AIModel], call) -> dict:
    """A non-streamed answer: the upstream call, then its record, then the answer in the API's shape."""
    caller = ledger.caller
    try:
        model, response, _ = await _attempts(caller, candidates, call, op=op)
    except GatewayError as error:
        ledger.failed(error)
        raise
    data = dump(response)
    usage = op.usage(data)
    ledger.answered(model, usage)
    await caller.gateway.limiter.add_tokens(model.provider,
                                            usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
    return op.shape(data, ledger.requested)


async def close_upstream(iterator):
    """Close an upstream stream (its connection), whatever state it is in."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - the connection is dropped either way
            pass


async def _relay(ledger: _Ledger, op: Operation, model, iterator, first, lease, reader: StreamReader, call_body):
    """Relay a stream as the endpoint's format has it (`reader`). The provider's concurrency `lease` ends with the
    stream (done, failed, or the client went away and the generator was closed).

    The record counts what was delivered: the provider's usage, or, when none came (the client went away, the
    stream broke, the provider sends none), LiteLLM's count of the prompt and of the text sent (estimated). A
    stream in which nothing came from the upstream (an unreadable body: LiteLLM then yields only its own closing
    chunks) ends with an error event, recorded as an upstream error."""
    caller = ledger.caller
    ttft = int((time.monotonic() - ledger.started) * 1000)
    status, error_type, http_status = OK, "", 200
    try:
        chunk = first
        while True:
            out = reader.frame(chunk)
            if out:
                yield out
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
        if not reader.answered and not reader.usage:
            raise GatewayError(502, f"The provider of '{public_name(model)}' sent an answer that could not be read.",
                               type_="api_error", code="upstream_malformed")
        if reader.failed:
            status, error_type, http_status = ERROR, reader.failed[:60], 502
        if reader.done:
            yield reader.done
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: the lane cancelled us, or closed us
        status, http_status = CLIENT_CLOSED, CLIENT_CLOSED_HTTP_STATUS
        raise
    except Exception as exc:  # noqa: BLE001 - the stream already started: report in-band, masked
        error = exc if isinstance(exc, GatewayError) else _map_upstream(exc, model)[0]
        status, error_type, http_status = ERROR, error.code or "stream_error", error.status
        yield reader.error_event(error)
    finally:
        usage = reader.usage
        estimated = not usage and bool(reader.sent or status == CLIENT_CLOSED)
        if estimated:
            messages, text = op.prompt(call_body)
            usage = {"prompt_tokens": await estimate_tokens(model.model_id, messages=messages, text=text),
                     "completion_tokens": await estimate_tokens(model.model_id, text="".join(reader.sent))}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        ledger.write(model, status=status, http_status=http_status, error_type=error_type,
                     tokens_in=usage.get("prompt_tokens"), tokens_out=usage.get("completion_tokens"), ttft_ms=ttft,
                     estimated=estimated, reported_cost=None if estimated else stream_reported_cost(iterator))
        if status == CLIENT_CLOSED:
            await close_upstream(iterator)
        await caller.gateway.limiter.add_tokens(model.provider, usage.get("total_tokens") or 0)
        await lease.release()


# --- chat completions, completions, embeddings, rerank ----------------------------------------------------------

class ChatStream(StreamReader):
    """chat.completion.chunk events as OpenAI sends them, a usage-only chunk with empty choices when the caller
    asked for usage, then [DONE]."""

    def prepare(self, call_body):
        self.wants_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        call_body["stream_options"] = {"include_usage": True}  # for the ledger, whatever the caller wants

    def frame(self, chunk):
        data = self.shape(dump(chunk))
        usage = data.pop("usage", None)
        if usage:
            usage.pop("cost", None)
            self.usage = usage
        if usage and all(not c.get("delta") and not c.get("finish_reason") for c in data.get("choices") or ()):
            return sse({**data, "choices": [], "usage": usage}) if self.wants_usage else None
        for choice in data.get("choices") or ():
            self.take(choice)
        return sse(data)

    def shape(self, data: dict) -> dict:
        return shapes.chat_chunk(data, self.requested)

    def take(self, choice: dict):
        if delta := choice.get("delta"):
            self.answered = True
            for key in ("content", "reasoning_content"):
                if text := delta.get(key):
                    self.sent.append(text)
            for tool_call in delta.get("tool_calls") or ():
                function = tool_call.get("function") or {}
                self.sent.append(f"{function.get('name') or ''}{function.get('arguments') or ''}")


class CompletionStream(ChatStream):
    """text_completion chunks (the legacy completions API): the same framing as chat, text in choices[].text."""

    def shape(self, data: dict) -> dict:
        return shapes.text_completion(data, self.requested)

    def take(self, choice: dict):
        if text := choice.get("text"):
            self.answered = True
            self.sent.append(text)


def _chat(body, params):
    from providers.llm import litellm

    return litellm.acompletion(**body, **params)


def _text_completion(body, params):
    from providers.llm import litellm

    return litellm.atext_completion(**body, **params)


def _embedding(body, params):
    from providers.llm import litellm

    return litellm.aembedding(**body, **params)


def _rerank(body, params):
    from providers.llm import litellm

    return litellm.arerank(**body, **params)


def _rerank_usage(data: dict) -> dict:
    billed = (data.get("meta") or {}).get("billed_units") or {}
    tokens = int(billed.get("total_tokens") or billed.get("input_tokens") or 0)
    return {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}


CHAT = Operation("chat.completions", ModelType.INFERENCE, _chat, shapes.chat_completion, stream=ChatStream,
                 required="messages", params_checked="chat_completion", model_settings=True, lean=lean.chat)
def _text_prompt(body: dict):
    """Prompts as text: LiteLLM cannot pass token ids on (it fails inside its chat bridge), so they are refused."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and any(not isinstance(p, str) for p in prompt):
        raise GatewayError(400, "Token-id prompts are not supported by this gateway: send the prompt as text (a "
                                "string or a list of strings).", type_="invalid_request_error", param="prompt",
                           code="unsupported_parameter")


COMPLETIONS = Operation("completions", ModelType.INFERENCE, _text_completion, shapes.text_completion,
                        stream=CompletionStream, required="prompt", check=_text_prompt,
                        prompt=lambda body: (None, body["prompt"] if isinstance(body["prompt"], str) else
                                             " ".join(p for p in body["prompt"] if isinstance(p, str))))
# (LiteLLM's lists of embedding parameters are not reliable: OpenAI's is its chat list; they are not enforced.)
EMBEDDINGS = Operation("embeddings", ModelType.EMBEDDING, _embedding, shapes.embedding_list, required="input",
                       model_settings=True, lean=lean.embedding)
RERANK = Operation("rerank", ModelType.RERANK, _rerank, shapes.rerank, usage=_rerank_usage, required="documents")


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

