"""Usage page: every gateway call (read-only), filterable, with totals, charts over time and a breakdown per tenant,
provider and model for the current filters, and a CSV export of the filtered rows.

At scale (millions of records): the page is never counted (LookaheadPaginator reads one row more than a page to know
whether there is an older page; no "Show all"); the filters' choices come from the tenants, providers and models the
user may see, not from a DISTINCT over the records; the date filter is a fixed list of ranges (no date drill-down,
which groups every record by year, month and day). Totals, charts and breakdowns read the hourly roll-ups whenever
the filters are ones a roll-up holds (tenant, provider, model, status, endpoint, streamed, date range); a search or an
HTTP-status filter reads the raw records. Without a date filter they cover the last SUMMARY_DAYS days. Status,
endpoint and HTTP status filters offer fixed choices (no DISTINCT over the records either).
"""
import csv
from datetime import timedelta
from functools import cached_property

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from tenants.admin import NotFoundOutsideScopeMixin, ReadOnlyAdminMixin

from providers.admin.base import principal_for
from providers.admin.dashboard import usage_charts
from providers.dashboard import bucket_unit, hourly_overview, usage_breakdown, usage_buckets, usage_totals
from providers.models import UsageRecord
from providers.selectors import usage_filter_choices, usage_hourly_list, usage_list

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


class LookaheadPaginator(Paginator):
    """A paginator that never counts: it reads page `number`'s rows plus one, so `count` is the rows up to this page
    (plus one when there are older ones) and the page links reach one page further than the current one."""

    def __init__(self, object_list, per_page, number: int, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.number = number

    @cached_property
    def _rows(self) -> list:
        start = (self.number - 1) * self.per_page
        return list(self.object_list[start:start + self.per_page + 1])

    @cached_property
    def count(self) -> int:
        return (self.number - 1) * self.per_page + len(self._rows)

    def page(self, number):
        number = self.validate_number(number)
        if number != self.number:  # not the page read ahead (the admin asks for that one only)
            return super().page(number)
        return Page(self._rows[:self.per_page], number, self)


class ScopedRelatedFilter(admin.RelatedFieldListFilter):
    """Choices: the tenants, providers or models the user may see (selectors.usage_filter_choices), instead of a
    DISTINCT over millions of records (RelatedOnlyFieldListFilter)."""

    def field_choices(self, field, request, model_admin):
        return usage_filter_choices(principal=principal_for(request), field=field.name)


def fixed_filter(field: str, title: str, choices: tuple) -> type:
    """A list filter with fixed choices (AllValuesFieldListFilter reads them with a DISTINCT over every record)."""

    class FixedChoicesFilter(admin.SimpleListFilter):
        parameter_name = f"{field}__exact"

        def lookups(self, request, model_admin):
            return choices

        def queryset(self, request, queryset):
            return queryset.filter(**{field: self.value()}) if self.value() is not None else queryset

    FixedChoicesFilter.title = title
    return FixedChoicesFilter


STATUSES = (("ok", "ok"), ("error", "error (upstream)"), ("client_closed", "client closed"), ("refused", "refused"))
ENDPOINTS = tuple((e, e) for e in ("chat.completions", "completions", "embeddings", "responses", "messages",
                                   "rerank"))
HTTP_STATUSES = tuple((str(c), str(c)) for c in (200, 400, 401, 403, 404, 408, 413, 415, 422, 429, 499, 500, 502,
                                                 503, 504))
# without a date filter, totals, charts and breakdowns cover the last 24 hours (whole hours): with 10 million records
# a week of roll-ups took 1.4 s to sum, a day 0.2 s (bench/README.md section 6); the dashboard shows 30 days
SUMMARY_HOURS = 24


# The list's filters a roll-up answers, as roll-up lookups (None: a value of its own, see _hourly_queryset).
HOURLY_LOOKUPS = {
    "status__exact": "status", "endpoint__exact": "endpoint", "streamed__exact": "streamed",
    "tenant__id__exact": "tenant_id", "provider__id__exact": "provider_id", "model__id__exact": "model_id",
    "provider__isnull": None, "model__isnull": None, "created_at__gte": "hour__gte", "created_at__lt": "hour__lt",
}
IGNORED = {"o", "p", "e", "_changelist_filters"}


def _hourly_queryset(request):
    """The roll-ups matching the list's filters, or None when a filter is one they do not hold (search, HTTP status):
    the same numbers as the raw records while those are kept (date ranges start at midnight: whole hours)."""
    lookups = {}
    for param, values in request.GET.lists():
        if param in IGNORED:
            continue
        if param not in HOURLY_LOOKUPS or len(values) != 1:
            return None
        value, target = values[0], HOURLY_LOOKUPS[param]
        if target is None:  # provider__isnull / model__isnull
            column = param.split("__")[0] + "_id"
            if value not in ("True", "False", "1", "0"):
                return None
            lookups[column if value in ("True", "1") else f"{column}__gt"] = 0
        else:
            lookups[target] = value
    try:
        return usage_hourly_list(principal=principal_for(request)).filter(**lookups)
    except (ValueError, TypeError, ValidationError):
        return None


class _Echo:
    def write(self, value):
        return value


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdminMixin, NotFoundOutsideScopeMixin, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "requested_model", "model", "provider", "endpoint", "status",
                    "http_status", "tokens_in", "tokens_out", "cost", "latency_ms", "ttft_ms", "streamed")
    # Related filters offer only what the user's records reference (a plain one would list every tenant).
    list_filter = (("created_at", admin.DateFieldListFilter), fixed_filter("status", "status", STATUSES),
                   fixed_filter("endpoint", "endpoint", ENDPOINTS), "streamed",
                   ("tenant", ScopedRelatedFilter), ("provider", ScopedRelatedFilter),
                   ("model", ScopedRelatedFilter), fixed_filter("http_status", "HTTP status", HTTP_STATUSES))
    search_fields = ("requested_model", "model__model_id", "model__alias", "error_type")
    list_select_related = ("tenant", "model", "provider")
    change_list_template = "admin/providers/usagerecord/change_list.html"
    show_full_result_count = False
    list_max_show_all = 0  # no "Show all": the list may hold millions

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        try:
            number = max(1, int(request.GET.get("p", 1)))
        except ValueError:
            number = 1
        return LookaheadPaginator(queryset, per_page, number, orphans=orphans,
                                  allow_empty_first_page=allow_empty_first_page)

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
        # the list's filters and search, not paginated: from the roll-ups when they hold every filter
        qs = _hourly_queryset(request)
        hourly = qs is not None
        if not hourly:
            qs = cl.queryset
        if "created_at__gte" not in request.GET and "created_at__lt" not in request.GET:
            since = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=SUMMARY_HOURS - 1)
            qs = qs.filter(hour__gte=since) if hourly else qs.filter(created_at__gte=since)
            response.context_data["summary_hours"] = SUMMARY_HOURS
        if hourly:  # one scan of the roll-ups for totals, charts and breakdowns
            overview = hourly_overview(qs, limit=BREAKDOWN_ROWS)
            totals, unit, buckets = overview["totals"], overview["unit"], overview["buckets"]
            breakdown = overview["breakdowns"].get
        else:
            totals = usage_totals(qs)
            unit = bucket_unit(totals["first"], totals["last"]) if totals["calls"] else None
            buckets = usage_buckets(qs, unit=unit, start=totals["first"], end=totals["last"]) if unit else []
            breakdown = lambda field: usage_breakdown(qs, by=field, limit=BREAKDOWN_ROWS)  # noqa: E731
        response.context_data["totals"] = totals
        if not totals["calls"]:
            return response
        response.context_data["charts"] = usage_charts(buckets, unit)
        response.context_data["breakdowns"] = [
            {"title": title, "rows": [{**row, "name": name(row), "url": _narrowed(cl, field, row[f"{field}_id"])}
                                      for row in breakdown(field)]}
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
