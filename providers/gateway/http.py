"""What every /v1 endpoint shares: authentication by tenant API key, answers and errors in OpenAI's shape, the
call through `providers.gateway.service.serve`. Endpoint modules (api.py, responses.py, messages.py) build on it."""
from __future__ import annotations

import json
from typing import Annotated, Optional

from django.http import HttpResponse, StreamingHttpResponse
from ninja import Schema
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from tenants.request_id import current_request_id
from tenants.scopes import Scope

from providers.gateway.core import endpoint_name, request_gateway, request_token
from providers.gateway.service import Caller, GatewayError, Operation, serve

GATEWAY_SCOPE = Scope.GATEWAY


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed.")
    return value


ModelName = Annotated[str, StringConstraints(max_length=300), AfterValidator(no_nul)]


class ErrorDetail(Schema):
    message: str
    type: str = Field(..., description="invalid_request_error, permission_error, rate_limit_error, api_error, ...")
    param: Optional[str] = Field(None, description="The request field at fault, if any.")
    code: Optional[str] = Field(None, description="e.g. invalid_api_key, model_not_found, request_too_large.")


class ErrorBody(Schema):
    """OpenAI's error shape."""

    error: ErrorDetail


def json_response(data: dict, status: int = 200, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(data, separators=(",", ":")), status=status,
                            content_type="application/json")
    for k, v in (headers or {}).items():
        response[k] = v
    return response


def error_response(status: int, message: str, type_: str, code: str | None = None, param=None, headers=None):
    return json_response({"error": {"message": message, "type": type_, "param": param, "code": code}}, status, headers)


def requested_model(request) -> str:
    """The body's `model`, if the body can be read as a JSON object (for the ledger's record of a refused call)."""
    data = getattr(request, "preparsed_json", None)
    if data is None:
        try:
            data = json.loads(request.body) if len(request.body) <= 1_000_000 else None
        except Exception:  # noqa: BLE001 - too large, not JSON: no model name then
            data = None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


async def authenticate(request) -> Caller:
    from tenants.throttle import auth_throttle, client_address, throttled_message  # key guessing (per address)

    address = client_address(request)
    if retry_after := await auth_throttle.aretry_after(address):
        raise GatewayError(429, throttled_message(retry_after), type_="rate_limit_error",
                           code="too_many_auth_failures", retry_after=retry_after)
    token = request_token(request)
    gateway = request_gateway(request)
    snapshot, key = await gateway.catalog.authenticate(token)  # fresh for the key's tenant (catalog.py)
    if key is None:
        if token:
            await auth_throttle.arecord_failure(address)
        raise GatewayError(401, "Invalid or missing API key. Send 'Authorization: Bearer <tenant API key>'.",
                           type_="invalid_request_error", code="invalid_api_key")
    if not key.has_scope(GATEWAY_SCOPE):
        if key.tenant_id in snapshot.tenants:
            gateway.usage.refused(key.tenant_id, key.pk, requested_model(request), endpoint_name(request.path), 403,
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


BUDGET_LIMIT, BUDGET_REMAINING = "x-eneo-budget-limit", "x-eneo-budget-remaining"


def budget_headers(caller: Caller, response: HttpResponse) -> HttpResponse:
    """A budgeted tenant's monthly budget and what is left of it (never below 0), 4 decimals: after this call's
    cost for a JSON answer, before it for a stream (its headers go out before its cost is known)."""
    budget = caller.tenant.monthly_budget
    if budget is not None and caller.spent is not None:
        response[BUDGET_LIMIT] = f"{budget:.4f}"
        response[BUDGET_REMAINING] = f"{max(budget - caller.spent, 0):.4f}"
    return response


async def served(request, op: Operation, payload: BaseModel) -> HttpResponse:
    """Authenticate, serve the call (providers.gateway.service.serve), answer JSON or server-sent events."""
    caller = await authenticate(request)
    result = await serve(caller, op, payload.model_dump(exclude_none=True), request.body)
    if isinstance(result, dict):
        return budget_headers(caller, json_response(result))
    response = StreamingHttpResponse(result, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return budget_headers(caller, response)
