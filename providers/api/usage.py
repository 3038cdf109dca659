"""REST: usage records and totals (GET /api/v1/usage, GET /api/v1/usage/summary).

A tenant API key with the scope usage:ReadUsage reads its own tenant's usage; the super key reads every
tenant's (optionally one, with tenant_id). Records never hold a key or a prompt. The summary also tells the
tenant's monthly budget, its spend this month and what remains (for the super key: of the tenant in tenant_id).

The list pages newest first by keyset (`cursor`, answered with `next_cursor`) or, as before, by limit/offset with a
`count`. The summary reads the hourly roll-ups (providers/rollups.py), so it covers records retention has deleted.
"""
from datetime import datetime
from decimal import Decimal
from typing import Optional
from uuid import UUID

from ninja import Field, FilterSchema, Query, Router, Schema
from ninja.pagination import paginate

from tenants.auth import tenant_key_auth
from tenants.pagination import KeysetPagination
from tenants.schemas import ErrorOut, NoNulIn, UtcDatetime

from providers import selectors
from providers.api.providers import Scope, api_caller
from providers.gateway.usage import month_spent

router = Router(tags=["usage"], auth=tenant_key_auth)


class UsageFilters(FilterSchema, NoNulIn):
    tenant_id: Optional[UUID] = Field(None, description="Sysadmin only: one tenant's usage.")
    since: Optional[UtcDatetime] = Field(None, description="From this time (inclusive, ISO 8601).")
    until: Optional[UtcDatetime] = Field(None, description="Up to this time (exclusive).")
    model: Optional[str] = Field(None, description="Requested name, model id or alias.", max_length=200)
    provider_id: Optional[str] = Field(None, description="A provider's public id (aip_...).", max_length=40)
    status: Optional[str] = Field(None, description="ok, error, client_closed or refused.", pattern="^(ok|error|client_closed|refused)$")
    streamed: Optional[bool] = None
    api_key_prefix: Optional[str] = Field(None, description="Only calls made with this API key.", max_length=16)



class UsageOut(Schema):
    id: int
    created_at: datetime
    requested_model: str
    model_id: Optional[str] = Field(None, description="The provider-side model that served the call.")
    provider_id: Optional[str] = Field(None, description="The provider's public id.")
    api_key_prefix: Optional[str] = None
    endpoint: str
    tokens_in: int
    tokens_out: int
    cost: Decimal
    latency_ms: int
    ttft_ms: Optional[int] = Field(None, description="Time to first token (streamed calls).")
    status: str
    http_status: int
    error_type: str
    streamed: bool

    @staticmethod
    def resolve_model_id(obj):
        return obj.model.model_id if obj.model_id else None

    @staticmethod
    def resolve_provider_id(obj):
        return obj.provider.public_id if obj.provider_id else None

    @staticmethod
    def resolve_api_key_prefix(obj):
        return obj.api_key.prefix if obj.api_key_id else None


class UsageTotalOut(Schema):
    requested_model: str
    calls: int
    errors: int
    tokens_in: int
    tokens_out: int
    cost: Decimal
    mean_latency_ms: float


class UsageSummaryOut(Schema):
    monthly_budget: Optional[Decimal] = Field(None, description="The tenant's monthly budget; null: none (or no "
                                                                "single tenant in view).")
    spent_this_month: Optional[Decimal] = Field(None, description="What the tenant spent this calendar month (UTC), "
                                                                  "whatever the filters; null: no single tenant.")
    budget_remaining: Optional[Decimal] = Field(None, description="monthly_budget - spent_this_month, at least 0; "
                                                                  "null when there is no budget.")
    models: list[UsageTotalOut] = Field(..., description="Totals per requested model over the filtered records.")


def _records(request, filters: UsageFilters):
    caller = api_caller(request, Scope.USAGE)
    data = filters.model_dump()
    if not caller.principal.is_sysadmin:
        data["tenant_id"] = None
    return selectors.usage_list(principal=caller.principal, **data)


def _budget(caller, tenant_id) -> dict:
    """The budget fields of the summary: the caller's tenant, or for the super key the one in tenant_id."""
    from tenants.models import Tenant

    tenant = caller.principal.tenant if not caller.principal.is_sysadmin else (
        Tenant.objects.filter(pk=tenant_id).first() if tenant_id else None)
    if tenant is None:
        return {}
    spent = month_spent(tenant.pk)
    budget = tenant.monthly_budget
    return {"monthly_budget": budget, "spent_this_month": spent,
            "budget_remaining": None if budget is None else max(budget - spent, Decimal(0))}


@router.get("", response={200: list[UsageOut], 401: ErrorOut, 403: ErrorOut, 422: ErrorOut})
@paginate(KeysetPagination)
def list_usage(request, filters: Query[UsageFilters]):
    """Usage records, newest first, with filters. Page with `cursor` (the previous page's `next_cursor`: stable
    while records are written, no COUNT) or with `offset` (counted: `count`)."""
    return _records(request, filters)


@router.get("/summary", response={200: UsageSummaryOut, 401: ErrorOut, 403: ErrorOut, 422: ErrorOut})
def usage_summary(request, filters: Query[UsageFilters]):
    """Totals per requested model (calls, errors, tokens, cost, mean latency) for the filtered records, with the
    tenant's monthly budget, its spend this month (as recorded: the ledger writes within a second) and what
    remains of it."""
    return summary_for(api_caller(request, Scope.USAGE), filters)


def summary_for(caller, filters: UsageFilters) -> dict:
    """The summary for a caller (REST and the MCP tool get-usage-summary)."""
    data = filters.model_dump()
    if not caller.principal.is_sysadmin:
        data["tenant_id"] = None
    return {**_budget(caller, filters.tenant_id),
            "models": selectors.usage_totals_by_model(principal=caller.principal, **data)}
