"""Usage page: every gateway call (read-only), filterable, with totals, charts over time and a breakdown per tenant,
provider and model for the current filters, and a CSV export of the filtered rows."""
import csv

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from tenants.admin import NotFoundOutsideScopeMixin, ReadOnlyAdminMixin

from providers.admin.base import principal_for
from providers.admin.dashboard import usage_charts
from providers.dashboard import bucket_unit, usage_breakdown, usage_buckets, usage_totals
from providers.models import UsageRecord
from providers.selectors import usage_list

BREAKDOWN_ROWS = 20  # per table; the list's filters narrow further
EXPORT_CHUNK = 2000
# Never a key: the API key's name is exported, not its prefix or digest.
EXPORT_COLUMNS = (
    ("created_at", lambda r: r.created_at.isoformat()), ("tenant", lambda r: r.tenant.name),
    ("tenant_id", lambda r: r.tenant_id), ("api_key_name", lambda r: r.api_key.name if r.api_key else ""),
    ("requested_model", lambda r: r.requested_model), ("model", lambda r: r.model.model_id if r.model else ""),
    ("provider", lambda r: r.provider.name if r.provider else ""),
    ("provider_id", lambda r: r.provider.public_id if r.provider else ""), ("endpoint", lambda r: r.endpoint),
    ("status", lambda r: r.status), ("http_status", lambda r: r.http_status), ("error_type", lambda r: r.error_type),
    ("tokens_in", lambda r: r.tokens_in), ("tokens_out", lambda r: r.tokens_out),
    ("tokens_estimated", lambda r: r.tokens_estimated), ("cost", lambda r: str(r.cost)),
    ("latency_ms", lambda r: r.latency_ms), ("ttft_ms", lambda r: "" if r.ttft_ms is None else r.ttft_ms),
    ("streamed", lambda r: r.streamed), ("request_id", lambda r: r.request_id),
)


def csv_safe(value) -> str:
    """A cell a spreadsheet will not run as a formula (requested_model and the like come from callers)."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _narrowed(cl, field: str, pk) -> str:
    """The list's current query string, narrowed to one tenant, provider or model (or to none)."""
    exact, isnull = f"{field}__id__exact", f"{field}__isnull"
    if pk is None:
        return cl.get_query_string({isnull: "True"}, remove=[exact])
    return cl.get_query_string({exact: pk}, remove=[isnull])


class _Echo:
    def write(self, value):
        return value


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdminMixin, NotFoundOutsideScopeMixin, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "requested_model", "model", "provider", "endpoint", "status",
                    "http_status", "tokens_in", "tokens_out", "cost", "latency_ms", "ttft_ms", "streamed")
    # Related filters offer only what the user's records reference (a plain one would list every tenant).
    list_filter = ("status", "endpoint", "streamed", ("tenant", admin.RelatedOnlyFieldListFilter),
                   ("provider", admin.RelatedOnlyFieldListFilter), ("model", admin.RelatedOnlyFieldListFilter),
                   "http_status")
    search_fields = ("requested_model", "model__model_id", "model__alias", "error_type")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "model", "provider")
    change_list_template = "admin/providers/usagerecord/change_list.html"
    show_full_result_count = False

    def get_queryset(self, request):
        # Superusers see every tenant; tenant admins their tenants' usage (one filter: providers.selectors).
        return usage_list(principal=principal_for(request)).select_related("tenant")

    def get_urls(self):
        return [path("export/", self.admin_site.admin_view(self.export_view), name="providers_usagerecord_export"),
                *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        try:
            cl = response.context_data["cl"]
        except (AttributeError, KeyError):
            return response  # a redirect or an error page
        qs = cl.queryset  # the list's filters, search and date drill-down; not paginated
        totals = usage_totals(qs)
        response.context_data["totals"] = totals
        if not totals["calls"]:
            return response
        unit = bucket_unit(totals["first"], totals["last"])
        response.context_data["charts"] = usage_charts(
            usage_buckets(qs, unit=unit, start=totals["first"], end=totals["last"]), unit)
        response.context_data["breakdowns"] = [
            {"title": title, "rows": [{**row, "name": name(row), "url": _narrowed(cl, field, row[f"{field}_id"])}
                                      for row in usage_breakdown(qs, by=field, limit=BREAKDOWN_ROWS)]}
            for field, title, name in (
                ("tenant", "Per tenant", lambda r: r["tenant__name"]),
                ("provider", "Per provider", lambda r: r["provider__name"] or "(no provider)"),
                ("model", "Per model",
                 lambda r: f"{r['model__model_id']} ({r['provider__name']})" if r["model_id"] else "(no model)"),
            )]
        return response

    def export_view(self, request):
        """The rows of the list as it is filtered now (same query string), as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            cl = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown filter in the query string.", content_type="text/plain")
        rows = cl.get_queryset(request).select_related("api_key").iterator(chunk_size=EXPORT_CHUNK)
        writer = csv.writer(_Echo())

        def lines():
            yield writer.writerow([name for name, _ in EXPORT_COLUMNS])
            for record in rows:
                yield writer.writerow([csv_safe(value(record)) for _, value in EXPORT_COLUMNS])

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
        return response
