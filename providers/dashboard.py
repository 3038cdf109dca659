"""Reads for the operator's dashboard and the usage charts: aggregated in the database, scoped like every read.

Usage comes from the hourly roll-ups (selectors.usage_hourly_list, providers/rollups.py) or, where they cannot answer
(the admin list searched or filtered by HTTP status), from the raw records (selectors.usage_list); either way a
principal sees its tenants' usage only. Providers come from selectors.provider_list; this module only groups them.
Buckets are TruncHour/TruncDay/TruncMonth in the current time zone (whole hours: a time zone whose offset is not a
whole number of hours shifts roll-up buckets by its minutes), filled with empty ones so a chart has no gaps.
Latency percentiles (p50/p95): from roll-ups, an estimate from their latency histogram
(rollups.histogram_percentile); from raw records, PostgreSQL's percentile_cont, or on SQLite (the embedded run)
Python over a bounded random sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import connections
from django.db.models import (Aggregate, Avg, Count, DateTimeField, FloatField, Max, Min, OuterRef, Q, QuerySet,
                              Subquery, Sum, Value)
from django.db.models.functions import Cast, Coalesce, TruncDay, TruncHour, TruncMonth
from django.utils import timezone

from tenants.models import Tenant

from providers.choices import HealthStatus
from providers.models import LATENCY_FIELDS, AIModel, Provider, ProviderCheck, UsageHourly
from providers.rollups import HOUR, histogram_percentile
from providers.selectors import Principal, provider_list, usage_hourly_list

ERROR = Q(status="error")  # an upstream error (refusals and client disconnects are counted apart in the list)
PERCENTILE_SAMPLE = 20_000  # SQLite: latencies read into Python at most (a random sample beyond that)
COST_PLACES = Decimal("0.000001")
HEALTH_KINDS = (ProviderCheck.Kind.TEST, ProviderCheck.Kind.HEALTH)  # the checks that set a provider's health
FAILING = (HealthStatus.DOWN, HealthStatus.DEGRADED)
EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont(fraction) WITHIN GROUP (ORDER BY expression), as a float."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(Cast(expression, FloatField()), fraction=repr(float(fraction)), **extra)


def percentile(values: list[float], fraction: float) -> float | None:
    """percentile_cont over `values` (sorted or not): linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _is_postgres(qs: QuerySet) -> bool:
    return connections[qs.db].vendor == "postgresql"


def _cost(value) -> Decimal:
    return Decimal(value or 0).quantize(COST_PLACES)


def _latency(value) -> float | None:
    return None if value is None else round(float(value), 1)


def _measures() -> dict:
    return {"calls": Count("id"), "errors": Count("id", filter=ERROR), "tokens_in": Sum("tokens_in"),
            "tokens_out": Sum("tokens_out"), "cost": Sum("cost"), "mean_latency_ms": Avg("latency_ms")}


def _hourly(qs: QuerySet) -> bool:
    return qs.model is UsageHourly


def _hourly_measures() -> dict:
    return {"calls": Sum("calls"), "errors": Sum("errors"), "tokens_in": Sum("tokens_in"),
            "tokens_out": Sum("tokens_out"), "cost": Sum("cost"), "latency_sum": Sum("latency_ms_sum"),
            "latency_min": Min("latency_ms_min"), "latency_max": Max("latency_ms_max"),
            **{name: Sum(name) for name in LATENCY_FIELDS}}


def _hourly_clean(row: dict, percentiles: bool = True) -> dict:
    """A grouped roll-up row as a raw one: mean latency from the sum, p50/p95 estimated from the histogram."""
    calls = row["calls"] = row.get("calls") or 0
    latency = row.pop("latency_sum", None)
    counts = [row.pop(name, None) or 0 for name in LATENCY_FIELDS]
    low, high = row.pop("latency_min", None), row.pop("latency_max", None)
    row["errors"] = row.get("errors") or 0
    row["mean_latency_ms"] = latency / calls if calls else None
    if percentiles:
        row["p50_ms"] = histogram_percentile(counts, 0.5, low, high)
        row["p95_ms"] = histogram_percentile(counts, 0.95, low, high)
    return _clean(row)


def _clean(row: dict) -> dict:
    row["cost"] = _cost(row.get("cost"))
    row["tokens_in"], row["tokens_out"] = row.get("tokens_in") or 0, row.get("tokens_out") or 0
    for name in ("mean_latency_ms", "p50_ms", "p95_ms"):
        if name in row:
            row[name] = _latency(row[name])
    return row


# --- Totals and buckets over a usage queryset -----------------------------------------------------------------

def usage_totals(qs: QuerySet) -> dict:
    """calls, errors, tokens_in, tokens_out, cost, mean/p50/p95 latency, first and last record: one query (two on
    SQLite when there are records: the latency sample). Over roll-ups: p50/p95 estimated, first/last to the hour."""
    qs = qs.order_by()
    if _hourly(qs):  # first and last: the first hour's start, the last hour's end
        totals = _hourly_clean(qs.aggregate(**_hourly_measures(), first=Min("hour"), last=Max("hour")))
        if totals["last"] is not None:
            totals["last"] += HOUR - timedelta(microseconds=1)
        return totals
    aggregates = {**_measures(), "first": Min("created_at"), "last": Max("created_at")}
    if _is_postgres(qs):
        aggregates.update(p50_ms=Percentile("latency_ms", 0.5), p95_ms=Percentile("latency_ms", 0.95))
    totals = qs.aggregate(**aggregates)
    if "p50_ms" not in totals:
        sample = _latency_sample(qs, totals["calls"], None)
        values = [latency for _, latency in sample]
        totals.update(p50_ms=percentile(values, 0.5), p95_ms=percentile(values, 0.95))
    return _clean(totals)


TRUNC = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}


@dataclass
class Bucket:
    start: datetime
    calls: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = Decimal(0).quantize(COST_PLACES)
    mean_latency_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None


def _bucket_key(moment: datetime, unit: str) -> tuple:
    local = timezone.localtime(moment)
    return {"hour": (local.year, local.month, local.day, local.hour), "day": (local.year, local.month, local.day),
            "month": (local.year, local.month)}[unit]


def bucket_starts(unit: str, start: datetime, end: datetime) -> list[datetime]:
    """The starts of every `unit` bucket from the one holding `start` to the one holding `end` (local time)."""
    local_start, local_end = timezone.localtime(start), timezone.localtime(end)
    starts = []
    if unit == "hour":
        moment = local_start.replace(minute=0, second=0, microsecond=0)
        while moment <= local_end:
            starts.append(timezone.localtime(moment))
            moment = moment + timedelta(hours=1)
        return starts
    day = local_start.date().replace(day=1) if unit == "month" else local_start.date()
    while day <= local_end.date():
        starts.append(timezone.make_aware(datetime.combine(day, time())))
        if unit == "month":
            day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        else:
            day += timedelta(days=1)
    return starts


def bucket_unit(first: datetime | None, last: datetime | None) -> str:
    """Hours for up to two days of records, days for up to three months, months beyond."""
    span = (last - first) if first and last else timedelta(0)
    return "hour" if span <= timedelta(days=2) else "day" if span <= timedelta(days=92) else "month"


def _latency_sample(qs: QuerySet, total: int, unit: str | None) -> list[tuple]:
    """(bucket key, latency) of every record, or of a random PERCENTILE_SAMPLE of them (SQLite only)."""
    if not total:
        return []
    rows = qs.order_by()
    if unit is not None:
        rows = rows.annotate(bucket=TRUNC[unit]("created_at")).values_list("bucket", "latency_ms")
    else:
        rows = rows.values_list("created_at", "latency_ms")
    if total > PERCENTILE_SAMPLE:
        rows = rows.order_by("?")[:PERCENTILE_SAMPLE]
    return [(_bucket_key(moment, unit) if unit else None, float(latency)) for moment, latency in rows]


def usage_buckets(qs: QuerySet, *, unit: str, start: datetime, end: datetime) -> list[Bucket]:
    """Per `unit` from `start` to `end`: calls, errors, tokens, cost, mean/p50/p95 latency; empty buckets
    included. One grouped query (two on SQLite: the latency sample)."""
    if _hourly(qs):
        grouped = qs.order_by().annotate(bucket=TRUNC[unit]("hour")).values("bucket")
        rows = {_bucket_key(row["bucket"], unit): _hourly_clean(row)
                for row in grouped.annotate(**_hourly_measures()).order_by("bucket")}
        return _fill(rows, unit, start, end)
    grouped = qs.order_by().annotate(bucket=TRUNC[unit]("created_at")).values("bucket")
    measures = _measures()
    postgres = _is_postgres(qs)
    if postgres:
        measures.update(p50_ms=Percentile("latency_ms", 0.5), p95_ms=Percentile("latency_ms", 0.95))
    rows = {_bucket_key(row["bucket"], unit): _clean(row) for row in grouped.annotate(**measures).order_by("bucket")}
    if not postgres and rows:
        latencies: dict[tuple, list[float]] = {}
        for key, latency in _latency_sample(qs, sum(r["calls"] for r in rows.values()), unit):
            latencies.setdefault(key, []).append(latency)
        for key, row in rows.items():
            values = latencies.get(key, [])
            row.update(p50_ms=_latency(percentile(values, 0.5)), p95_ms=_latency(percentile(values, 0.95)))
    return _fill(rows, unit, start, end)


def _fill(rows: dict, unit: str, start: datetime, end: datetime) -> list[Bucket]:
    buckets = []
    for moment in bucket_starts(unit, start, end):
        row = rows.get(_bucket_key(moment, unit))
        buckets.append(Bucket(start=moment, **{k: v for k, v in row.items() if k != "bucket"}) if row
                       else Bucket(start=moment))
    return buckets


BREAKDOWN = {
    "tenant": ("tenant_id", "tenant__name"),
    "provider": ("provider_id", "provider__name"),
    "model": ("model_id", "model__model_id", "provider__name"),
}


def usage_breakdown(qs: QuerySet, *, by: str, order: str = "calls", limit: int = 10) -> list[dict]:
    """The top `limit` tenants, providers or models of a usage queryset by calls or cost: one query.

    Each row: the group's id and name(s), calls, errors, tokens_in, tokens_out, cost (Decimal), mean_latency_ms.
    """
    assert order in ("calls", "cost") and by in BREAKDOWN
    if _hourly(qs):
        return _hourly_breakdown(qs, by=by, order=order, limit=limit)
    rows = (qs.order_by().values(*BREAKDOWN[by]).annotate(**_measures())
            .order_by(f"-{order}", "-calls", BREAKDOWN[by][1])[:limit])
    return [_clean(row) for row in rows]


def _hourly_breakdown(qs: QuerySet, *, by: str, order: str, limit: int) -> list[dict]:
    """usage_breakdown over roll-ups: grouped by the plain provider/model id, named in one more query; the hours of a
    deleted provider or model count as none (as its raw records, whose reference became NULL)."""
    column = f"{by}_id"
    grouped = list(qs.order_by().values(column).annotate(**_hourly_measures())
                   .order_by(f"-{order}", "-calls", column)[:limit + 5])  # a few more: deleted ids merge into none
    return _named(grouped, by=by, order=order, limit=limit)


def _named(grouped: list[dict], *, by: str, order: str, limit: int) -> list[dict]:
    """Grouped roll-up rows (by tenant_id, provider_id or model_id) with their names, the top `limit` by `order`."""
    column = f"{by}_id"
    ids = {row[column] for row in grouped if row[column]}
    if by == "tenant":  # grouped by the id alone, named afterwards (a join before grouping costs a sort on disk)
        names = {pk: {"tenant__name": name} for pk, name in Tenant.objects.filter(pk__in=ids).values_list("pk", "name")}
        empty = {"tenant__name": None}
    elif by == "provider":
        names = {pk: {"provider__name": name}
                 for pk, name in Provider.objects.filter(pk__in=ids).values_list("pk", "name")}
        empty = {"provider__name": None}
    else:
        names = {pk: {"model__model_id": model_id, "provider__name": provider}
                 for pk, model_id, provider in AIModel.objects.filter(pk__in=ids).values_list(
                     "pk", "model_id", "provider__name")}
        empty = {"model__model_id": None, "provider__name": None}
    merged: dict = {}
    for row in grouped:
        pk = row[column] if row[column] in names else None
        acc = merged.get(pk)
        if acc is None:
            merged[pk] = {**row, column: pk, **names.get(pk, empty)}
            continue
        for name in ("calls", "errors", "tokens_in", "tokens_out", "cost", "latency_sum"):
            acc[name] = (acc[name] or 0) + (row[name] or 0)
    rows = [_hourly_clean(row, percentiles=False) for row in merged.values()]
    name_key = BREAKDOWN[by][1]
    rows.sort(key=lambda r: (-r[order], -r["calls"], r[name_key] or ""))
    return rows[:limit]


_ADDED = ("calls", "errors", "tokens_in", "tokens_out", "cost", "latency_sum", *LATENCY_FIELDS)


def _add(acc: dict | None, row: dict) -> dict:
    if acc is None:
        return {**{name: row[name] or 0 for name in _ADDED}, "latency_min": row["latency_min"],
                "latency_max": row["latency_max"]}
    for name in _ADDED:
        acc[name] += row[name] or 0
    acc["latency_min"] = min(acc["latency_min"], row["latency_min"])
    acc["latency_max"] = max(acc["latency_max"], row["latency_max"])
    return acc


def hourly_overview(qs: QuerySet, *, limit: int = 10) -> dict:
    """Totals, chart buckets and the top `limit` tenants, providers and models of a roll-up queryset, from ONE grouped
    query (per local day, tenant, provider and model; summed in Python) instead of one scan per part: the usage
    list's summary over millions of roll-up rows. Returns {"totals", "unit", "buckets", "breakdowns": {by: rows}};
    a span of two days or less is charted per hour (one more query, over those two days)."""
    grouped = list(qs.order_by().annotate(day=TruncDay("hour")).values("day", "tenant_id", "provider_id", "model_id")
                   .annotate(**_hourly_measures(), first=Min("hour"), last=Max("hour")))
    if not grouped:
        return {"totals": usage_totals(qs.none()), "unit": None, "buckets": [], "breakdowns": {}}
    total, days, parts = None, {}, {"tenant": {}, "provider": {}, "model": {}}
    for row in grouped:
        total = _add(total, row)
        key = _bucket_key(row["day"], "day")
        days[key] = _add(days.get(key), row)
        for by, acc in parts.items():
            acc[row[f"{by}_id"]] = _add(acc.get(row[f"{by}_id"]), row)
    total.update(first=min(r["first"] for r in grouped), last=max(r["last"] for r in grouped) + HOUR
                 - timedelta(microseconds=1))
    totals = _hourly_clean(total)
    unit = bucket_unit(totals["first"], totals["last"])
    if unit == "hour":
        buckets = usage_buckets(qs.filter(hour__gte=totals["first"]), unit="hour", start=totals["first"],
                                end=totals["last"])
    else:
        rows = {}
        for (year, month, day), acc in sorted(days.items()):
            key = (year, month, day) if unit == "day" else (year, month)
            rows[key] = _add(rows.get(key), acc)
        buckets = _fill({key: _hourly_clean(acc) for key, acc in rows.items()}, unit, totals["first"], totals["last"])
    breakdowns = {}
    for by, acc in parts.items():
        ordered = sorted(({f"{by}_id": pk, **values} for pk, values in acc.items()),
                         key=lambda r: (-r["calls"], str(r[f"{by}_id"])))
        breakdowns[by] = _named(ordered[:limit + 5], by=by, order="calls", limit=limit)
    return {"totals": totals, "unit": unit, "buckets": buckets, "breakdowns": breakdowns}


# --- Provider health ----------------------------------------------------------------------------------------

def provider_health_counts(*, principal: Principal) -> dict[str, int]:
    """How many visible providers are in each health status (every status present, 0 when none): one query."""
    counts = dict(provider_list(principal=principal).order_by().values_list("health_status")
                  .annotate(n=Count("id")))
    return {status: counts.get(status, 0) for status in HealthStatus.values}


def provider_failing_list(*, principal: Principal, limit: int = 10) -> list:
    """Visible providers that are down or degraded, down first, each with `failing_since`: the first failing
    check after their last healthy one (their last check time when no check recorded it). One query."""
    checks = ProviderCheck.objects.filter(provider=OuterRef("pk"), state=ProviderCheck.State.DONE,
                                          kind__in=HEALTH_KINDS)
    last_ok = checks.filter(status=HealthStatus.HEALTHY).order_by("-created_at", "-id").values("created_at")[:1]
    first_failure = (checks.filter(status__in=FAILING,
                                   created_at__gt=Coalesce(OuterRef("last_ok"), Value(EPOCH, DateTimeField())))
                     .order_by("created_at", "id").values("created_at")[:1])
    providers = list(provider_list(principal=principal).filter(health_status__in=FAILING)
                     .annotate(last_ok=Subquery(last_ok), failing_since=Subquery(first_failure))
                     .order_by("-health_status", "name", "id")[:limit])  # "down" > "degraded"
    for provider in providers:
        provider.failing_since = provider.failing_since or provider.health_checked_at
    return providers


@dataclass(frozen=True)
class HealthChange:
    at: datetime
    before: str  # a HealthStatus value ("" for the first check shown)
    after: str
    message: str


def health_changes(checks) -> list[HealthChange]:
    """The health transitions among `checks` (newest first, as provider_check_list returns them), newest first:
    connectivity tests and scheduled health checks that are done, each whose status differs from the one before."""
    changes, previous = [], None
    for check in sorted((c for c in checks if c.kind in HEALTH_KINDS and c.state == ProviderCheck.State.DONE),
                        key=lambda c: (c.created_at, c.pk)):
        if check.status != previous:
            changes.append(HealthChange(check.created_at, previous or "", check.status, check.message))
            previous = check.status
    return changes[::-1]


def health_history(checks) -> list:
    """The done connectivity tests and health checks among `checks`, oldest first (for a chart)."""
    return sorted((c for c in checks if c.kind in HEALTH_KINDS and c.state == ProviderCheck.State.DONE),
                  key=lambda c: (c.created_at, c.pk))


# --- The dashboard --------------------------------------------------------------------------------------------

@dataclass
class Window:
    name: str  # "24h" | "30d"
    unit: str
    start: datetime
    end: datetime
    totals: dict = field(default_factory=dict)
    buckets: list[Bucket] = field(default_factory=list)


@dataclass
class Dashboard:
    health_counts: dict[str, int] | None = None  # None: the viewer may not see providers
    failing: list = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)  # empty: the viewer may not see usage
    top_tenants: dict[str, list[dict]] = field(default_factory=dict)  # "calls"/"cost" -> rows (30 days)
    top_models: dict[str, list[dict]] = field(default_factory=dict)


def dashboard_get(*, principal: Principal, providers: bool = True, usage: bool = True, now=None,
                  top: int = 5) -> Dashboard:
    """Provider health and the last 24 hours / 30 days of usage as far as `principal` may see them (usage from the
    hourly roll-ups).

    About a dozen queries whatever the amount of data (PostgreSQL: 2 health + 2 x 2 per window + 4 top lists)."""
    now = now or timezone.now()
    board = Dashboard()
    if providers:
        board.health_counts = provider_health_counts(principal=principal)
        board.failing = provider_failing_list(principal=principal)
    if usage:
        local = timezone.localtime(now)
        hour = local.replace(minute=0, second=0, microsecond=0)
        day = timezone.make_aware(datetime.combine(local.date(), time()))
        for name, unit, start in (("24h", "hour", hour - timedelta(hours=23)),
                                  ("30d", "day", day - timedelta(days=29))):
            qs = usage_hourly_list(principal=principal, since=start)
            board.windows.append(Window(name, unit, start, now, totals=usage_totals(qs),
                                        buckets=usage_buckets(qs, unit=unit, start=start, end=now)))
        month = usage_hourly_list(principal=principal, since=day - timedelta(days=29))
        for order in ("calls", "cost"):
            board.top_tenants[order] = usage_breakdown(month, by="tenant", order=order, limit=top)
            board.top_models[order] = usage_breakdown(month, by="model", order=order, limit=top)
    return board
