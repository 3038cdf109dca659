"""The admin index as the operator's dashboard, and the usage charts shared with the usage list.

Reads come from providers.dashboard (scoped by the viewer); this module only turns them into charts, tables and
links. The index template is templates/admin/index.html; eneo_site.admin_site calls `dashboard_context`.
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.admin.utils import quote
from django.urls import reverse

from providers.admin.base import HEALTH_COLOURS, principal_for
from providers.admin.charts import BLUE, GREY, ORANGE, RED, Chart, Series, bar_chart, fmt, line_chart
from providers.choices import HealthStatus
from providers.dashboard import Bucket, dashboard_get, health_changes, health_history
from providers.models import Provider, UsageRecord

AXIS_FORMAT = {"hour": "%H:00", "day": "%m-%d", "month": "%Y-%m"}
ROW_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}
WINDOW_TITLES = {"24h": "Last 24 hours (hourly)", "30d": "Last 30 days (daily)"}


def usage_charts(buckets: list[Bucket], unit: str, *, scope: str = "") -> list[Chart]:
    """Calls and errors, cost, and latency (p50/p95) per bucket: three charts with their tables."""
    axis = [b.start.strftime(AXIS_FORMAT[unit]) for b in buckets]
    full = [b.start.strftime(ROW_FORMAT[unit]) for b in buckets]
    suffix = f" ({scope})" if scope else ""
    calls = Chart(f"Calls and errors{suffix}", bar_chart(
        title=f"Calls and errors per {unit}{suffix}", labels=full if len(buckets) <= 1 else axis,
        series=[Series("calls", [b.calls for b in buckets], BLUE), Series("errors", [b.errors for b in buckets], RED)]),
        ["Time", "Calls", "Errors"], [[t, b.calls, b.errors] for t, b in zip(full, buckets)])
    cost = Chart(f"Cost{suffix}", bar_chart(
        title=f"Cost per {unit}{suffix}", labels=axis, series=[Series("cost", [b.cost for b in buckets], ORANGE)]),
        ["Time", "Cost"], [[t, str(b.cost)] for t, b in zip(full, buckets)])
    latency = Chart(f"Latency{suffix}", line_chart(
        title=f"Latency p50 and p95 per {unit}{suffix}", labels=axis, unit="ms",
        series=[Series("p50", [b.p50_ms for b in buckets], BLUE), Series("p95", [b.p95_ms for b in buckets], RED)]),
        ["Time", "p50 (ms)", "p95 (ms)", "Mean (ms)"],
        [[t, fmt(b.p50_ms), fmt(b.p95_ms), fmt(b.mean_latency_ms)] for t, b in zip(full, buckets)])
    return [calls, cost, latency]


def health_history_context(checks) -> dict:
    """The provider page's health history from its latest checks (newest first): a chart of the connectivity
    tests and health checks (latency, each bar coloured by its result) with its table, and the health changes."""
    labels = dict(HealthStatus.choices)
    history = health_history(checks)
    if not history:
        return {"health_chart": None, "health_changes": []}
    times = [c.created_at.strftime("%m-%d %H:%M") for c in history]
    chart = Chart("Latency of each check, coloured by its result", bar_chart(
        title=f"Health history: latency of the last {len(history)} checks, coloured by result", labels=times,
        unit="ms", series=[Series("latency", [c.latency_ms or 0 for c in history], GREY)],
        colours=[HEALTH_COLOURS.get(c.status, GREY) for c in history]),
        ["Time", "Kind", "Result", "Latency (ms)", "Message"],
        [[t, c.get_kind_display(), labels.get(c.status, c.status), fmt(c.latency_ms), c.message]
         for t, c in zip(times, history)][::-1])
    changes = [{"at": ch.at, "before": labels.get(ch.before, "-") if ch.before else "-",
                "after": labels.get(ch.after, ch.after), "status": ch.after, "message": ch.message}
               for ch in health_changes(checks)]
    return {"health_chart": chart, "health_changes": changes}


def usage_url(**filters) -> str:
    """The usage list filtered with its own list filters (tenant__id__exact, model__id__exact, ...)."""
    url = reverse("admin:providers_usagerecord_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


def _top_rows(rows: list[dict], by: str) -> list[dict]:
    out = []
    for row in rows:
        if by == "tenant":
            name, url = row["tenant__name"], usage_url(tenant__id__exact=row["tenant_id"])
        elif row["model_id"] is None:
            name, url = "(no model: refused or unknown)", usage_url(model__isnull="True")
        else:
            name = f"{row['model__model_id']} ({row['provider__name'] or '-'})"
            url = usage_url(model__id__exact=row["model_id"])
        out.append({**row, "name": name, "url": url})
    return out


def dashboard_context(request, site) -> dict:
    """Everything templates/admin/index.html shows, for what the viewer may see: the providers and usage pages'
    own view permissions decide whether their parts are there at all."""
    sees_providers = Provider in site._registry and site._registry[Provider].has_view_permission(request)
    sees_usage = UsageRecord in site._registry and site._registry[UsageRecord].has_view_permission(request)
    if not (sees_providers or sees_usage):
        return {}
    board = dashboard_get(principal=principal_for(request), providers=sees_providers, usage=sees_usage)
    provider_list_url = reverse("admin:providers_provider_changelist")
    context = {"dashboard": board, "usage_url": usage_url()}
    if board.health_counts is not None:
        context["health_cards"] = [
            {"status": status, "label": label, "count": board.health_counts[status],
             "colour": HEALTH_COLOURS.get(status, GREY), "url": f"{provider_list_url}?health_status__exact={status}"}
            for status, label in HealthStatus.choices]
        context["failing"] = [
            {"provider": p, "url": reverse("admin:providers_provider_change", args=[quote(p.pk)])} for p in board.failing]
    context["windows"] = [
        {"name": w.name, "title": WINDOW_TITLES[w.name], "totals": w.totals,
         "charts": usage_charts(w.buckets, w.unit)} for w in board.windows]
    if board.windows:
        context["top"] = [
            {"title": f"Top tenants by {order} (30 days)", "kind": "Tenant", "rows": _top_rows(rows, "tenant")}
            for order, rows in board.top_tenants.items()] + [
            {"title": f"Top models by {order} (30 days)", "kind": "Model", "rows": _top_rows(rows, "model")}
            for order, rows in board.top_models.items()]
    return context
