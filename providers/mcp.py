"""MCP server: the AI-provider operations of the REST API as MCP tools, at /mcp (streamable HTTP, stateless).

Built on the official MCP Python SDK (mcp 2.x, `MCPServer`). Each tool is an interface like a REST handler: it
takes the same arguments as the REST body (the same pydantic schema: same field names, validation and messages),
checks the same scope on the same key, and calls the same services and selectors (providers.api.providers'
`*_for` functions), so the isolation rules are the REST API's: another tenant's object is "not found". Audit
events name the source "mcp". Results are structured content with the REST response schema as outputSchema;
secrets are never in them (the REST Out schemas carry none).

Authentication happens before the MCP layer, in `McpAuth` (eneo_site.asgi mounts it): no key or a wrong one is
a 401 at the HTTP level, before any tool runs. The authenticated key travels to the tools in the ASGI scope
(MCP's request context carries the Starlette request).
"""
from __future__ import annotations

import json
from typing import Any, Callable

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError as DjangoValidationError
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from ninja import Schema
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic import ValidationError as PydanticValidationError

from credentials.resolution import CredentialError
from tenants.scopes import Scope

from providers import selectors
from providers.api import providers as rest
from providers.api.checks import TaskOut, check_for, provider_test_start_for
from providers.api.schemas import (EnablementOut, ModelIn, ModelOut, ProviderFilters, ProviderIn, ProviderOut,
                                   ProviderPatch)
from providers.selectors import Forbidden, NotFound
from providers.services import Conflict

SCOPE_KEY = "eneo.mcp_auth"  # the ASGI scope entry McpAuth sets: (TenantApiKey | sysadmin Actor, client address)

READ = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
WRITE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
UPDATE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False)
DELETE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False)
CALLS_OUT = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=True)


class _PassThrough(ArgModelBase):
    """The SDK's argument model: everything passes to the tool, which validates with the REST schema itself."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def model_dump_one_level(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _Path(BaseModel):
    provider_id: str = Field(..., max_length=40, description="The provider's public id (aip_...).")
    model_pk: int = Field(..., ge=1, le=2**63 - 1, description="The model's id (from list-ai-models).")
    tenant_id: str = Field(..., description="The tenant's id (a UUID).")
    task_id: str = Field(..., max_length=64, description="The id a queued check answered with.")
    force: bool = Field(False, description="Also delete the provider's models (else a provider with models is "
                                           "refused, with their count).")
    limit: int = Field(50, ge=1, le=500, description="At most this many items.")
    offset: int = Field(0, ge=0, le=10**9, description="Skip this many items.")


class ProviderPage(Schema):
    items: list[ProviderOut]
    count: int = Field(..., description="All matching providers (items holds at most `limit`).")


class ModelPage(Schema):
    items: list[ModelOut]
    count: int


class Deleted(Schema):
    provider_id: str
    deleted: bool


def _input_schema(body: type[BaseModel] | None, path: tuple[str, ...]) -> dict:
    """The tool's inputSchema: the path-like arguments, then the REST body's fields (by alias, as REST)."""
    props, required, defs = {}, [], {}
    path_schema = _Path.model_json_schema()
    for name in path:
        props[name] = path_schema["properties"][name]
        if name in path_schema.get("required", ()):
            required.append(name)
    if body is not None:
        schema = body.model_json_schema(by_alias=True)
        props.update(schema.get("properties", {}))
        required += [r for r in schema.get("required", ()) if r not in required]
        defs = schema.get("$defs", {})
    out = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    if defs:
        out["$defs"] = defs
    return out


def _field_errors(errors, drop=()) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in drop) or "arguments"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "Invalid arguments: " + "; ".join(parts)


def _caller(ctx, scope: Scope) -> rest.Caller:
    request = getattr(ctx.request_context, "request", None)
    auth, address = (request.scope.get(SCOPE_KEY) if request is not None else None) or (None, None)
    if auth is None:  # McpAuth answers 401 before a tool runs; this is the belt to those braces
        raise ToolError("Not authenticated.")
    return rest.caller_for(auth, scope, ip=address, source="mcp")


def _result(schema: type[BaseModel], obj) -> CallToolResult:
    """The REST Out schema's rendering of an object (a dict is already rendered, up to scalars)."""
    if isinstance(obj, dict):
        data = json.loads(json.dumps(obj, default=str))
    else:
        data = schema.from_orm(obj).model_dump(mode="json")
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data))], structured_content=data)


def _make_tool(name: str, title: str, description: str, *, scope: Scope, annotations: ToolAnnotations,
               run: Callable[..., Any], out: type[BaseModel], body: type[BaseModel] | None = None,
               path: tuple[str, ...] = ()) -> Tool:
    """A tool whose arguments are `path` plus the fields of the REST body schema `body`, validated by those
    schemas (same messages as REST), running `run(caller, path_args, body)` in Django's thread."""
    path_model = create_model(f"{name}-path", **{k: (_Path.model_fields[k].annotation, _Path.model_fields[k])
                                                   for k in path})

    async def fn(ctx, **arguments) -> CallToolResult:
        given_path = {k: v for k, v in arguments.items() if k in path}
        given_body = {k: v for k, v in arguments.items() if k not in path}
        allowed = set() if body is None else {f.alias or n for n, f in body.model_fields.items()}
        unknown = sorted(k for k in given_body if k not in allowed)
        if unknown:
            raise ToolError(_field_errors([{"loc": (k,), "msg": "Extra inputs are not permitted"} for k in unknown]))
        try:
            checked = path_model.model_validate(given_path)
            payload = body.model_validate(given_body) if body is not None else None
        except PydanticValidationError as exc:
            raise ToolError(_field_errors(exc.errors(include_url=False))) from None
        values = {k: getattr(checked, k) for k in path}

        def call():
            caller = _caller(ctx, scope)
            return _result(out, run(caller, values, payload))

        try:
            return await sync_to_async(call, thread_sensitive=True)()
        except (NotFound, Forbidden, Conflict, CredentialError) as exc:
            raise ToolError(str(exc)) from None
        except DjangoValidationError as exc:
            messages = getattr(exc, "message_dict", None) or {"arguments": exc.messages}
            raise ToolError("Invalid arguments: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in messages.items()))
        except NinjaValidationError as exc:
            raise ToolError(_field_errors(exc.errors, drop=("body", "query"))) from None

    output_schema = out.model_json_schema(mode="serialization")
    return Tool(fn=fn, name=name, title=title, description=description,
                parameters=_input_schema(body, path), fn_metadata=FuncMetadata(arg_model=_PassThrough,
                                                                               output_schema=output_schema),
                is_async=True, context_kwarg="ctx", annotations=annotations)


# --- the tools: each one REST operation ---------------------------------------------------------------------------

def _list_providers(caller, path, filters):
    found = rest.provider_list_for(caller, filters)
    items = list(found[path["offset"]:path["offset"] + path["limit"]])
    return {"items": [ProviderOut.from_orm(p).model_dump(mode="json") for p in items], "count": found.count()}


def _list_models(caller, path, _):
    found = selectors.model_list(principal=caller.principal, provider=rest.provider_for(caller, path["provider_id"]))
    items = list(found[path["offset"]:path["offset"] + path["limit"]])
    return {"items": [ModelOut.from_orm(m).model_dump(mode="json") for m in items], "count": found.count()}


def _tenant_uuid(value: str):
    from uuid import UUID

    try:
        return UUID(value)
    except ValueError:
        raise NotFound(f"Tenant {value[:40]} not found.") from None


def _delete(caller, path, _):
    from providers import services

    provider = rest.provider_for(caller, path["provider_id"], "delete")
    services.provider_delete(actor=caller.actor, provider=provider, force=path["force"])
    return {"provider_id": path["provider_id"], "deleted": True}


def _usage_summary(caller, path, filters):
    from providers.api.usage import summary_for

    return summary_for(caller, filters)


def _tools() -> list[Tool]:
    from providers.api.usage import UsageFilters, UsageSummaryOut

    return [
        _make_tool("list-ai-providers", "List AI providers",
                   "The AI providers this key may see, by name, with health, key count (masked) and model count. "
                   "Filters: provider_type, status, health_status, q (name contains).",
                   scope=Scope.LIST, annotations=READ, body=ProviderFilters, path=("limit", "offset"),
                   run=_list_providers, out=ProviderPage),
        _make_tool("get-ai-provider", "Get an AI provider", "One AI provider by its public id (aip_...).",
                   scope=Scope.GET, annotations=READ, path=("provider_id",), out=ProviderOut,
                   run=lambda caller, path, _: rest._provider_out(caller, rest.provider_for(caller,
                                                                                          path["provider_id"]))),
        _make_tool("create-ai-provider", "Create an AI provider",
                   "Create a provider, optionally with its first API key (write-only, stored encrypted) and its "
                   "models, all or nothing. The type's fields: GET /api/v1/provider-types/{type}.",
                   scope=Scope.CREATE, annotations=WRITE, body=ProviderIn, out=ProviderOut,
                   run=lambda caller, path, payload: rest.provider_create_for(caller, payload)),
        _make_tool("update-ai-provider", "Update an AI provider",
                   "Change a provider: only the fields given. `config` replaces the stored settings.",
                   scope=Scope.UPDATE, annotations=UPDATE, body=ProviderPatch, path=("provider_id",), out=ProviderOut,
                   run=lambda caller, path, payload: rest.provider_update_for(caller, path["provider_id"], payload)),
        _make_tool("delete-ai-provider", "Delete an AI provider",
                   "Delete a provider and its keys; with force=true its models too (else refused when it has "
                   "models).", scope=Scope.DELETE, annotations=DELETE, path=("provider_id", "force"), out=Deleted,
                   run=_delete),
        _make_tool("list-ai-models", "List a provider's models", "The provider's models this key may see.",
                   scope=Scope.GET, annotations=READ, path=("provider_id", "limit", "offset"), out=ModelPage,
                   run=_list_models),
        _make_tool("add-ai-model", "Add a model to a provider",
                   "Add a model; unset capabilities, context window and prices come from LiteLLM's registry.",
                   scope=Scope.UPDATE, annotations=WRITE, body=ModelIn, path=("provider_id",), out=ModelOut,
                   run=lambda caller, path, payload: rest.model_create_for(caller, path["provider_id"], payload)),
        _make_tool("enable-ai-model-for-tenant", "Enable a model for a tenant",
                   "Let a tenant use an instance-level model (sysadmin only, the super key). Idempotent.",
                   scope=Scope.UPDATE, annotations=UPDATE, path=("provider_id", "model_pk", "tenant_id"),
                   out=EnablementOut,
                   run=lambda caller, path, _: rest.model_enablement_for(
                       caller, path["provider_id"], path["model_pk"], _tenant_uuid(path["tenant_id"]), enabled=True)),
        _make_tool("test-ai-provider", "Test a provider's connection",
                   "Queue a connectivity test (a 1-token call to the provider; may be billed). Read the result with "
                   "get-check-result.", scope=Scope.UPDATE, annotations=CALLS_OUT, path=("provider_id",), out=TaskOut,
                   run=lambda caller, path, _: provider_test_start_for(caller, path["provider_id"])),
        _make_tool("get-check-result", "Read a queued check", "State and outcome of a queued test (masked).",
                   scope=Scope.GET, annotations=READ, path=("task_id",), out=TaskOut,
                   run=lambda caller, path, _: check_for(caller, path["task_id"])),
        _make_tool("get-usage-summary", "Usage summary",
                   "Totals per requested model (calls, errors, tokens, cost, mean latency) and the tenant's monthly "
                   "budget, spend and remaining budget. Filters: since, until, model, provider_id, status.",
                   scope=Scope.USAGE, annotations=READ, body=UsageFilters, out=UsageSummaryOut, run=_usage_summary),
    ]


def build_mcp_server() -> MCPServer:
    return MCPServer(name="Eneo LLM gateway", title="Eneo AI providers",
                     instructions="Manage the AI providers, models and checks of an Eneo LLM gateway. Every tool "
                                  "needs a scope on the API key (aiProviders:ListAiProviders, ...).",
                     tools=_tools(), log_level="WARNING")

