"""Reads for the operator's dashboard and the usage charts: aggregated in the database, scoped like every read.

Usage comes from selectors.usage_list (a principal sees its tenants' records only) and providers from
selectors.provider_list; this module only groups them. Buckets are TruncHour/TruncDay/TruncMonth in the current
time zone, filled with empty ones so a chart has no gaps. Latency percentiles (p50/p95) are PostgreSQL's
percentile_cont; on SQLite (the embedded run) they are computed in Python over a bounded random sample.
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

from providers.choices import HealthStatus
from providers.models import ProviderCheck
from providers.selectors import Principal, provider_list, usage_list

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
    SQLite when there are records: the latency sample)."""
    qs = qs.order_by()
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
    rows = (qs.order_by().values(*BREAKDOWN[by]).annotate(**_measures())
            .order_by(f"-{order}", "-calls", BREAKDOWN[by][1])[:limit])
    return [_clean(row) for row in rows]


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
    """Provider health and the last 24 hours / 30 days of usage as far as `principal` may see them.

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
            qs = usage_list(principal=principal, since=start)
            board.windows.append(Window(name, unit, start, now, totals=usage_totals(qs),
                                        buckets=usage_buckets(qs, unit=unit, start=start, end=now)))
        month = usage_list(principal=principal, since=day - timedelta(days=29))
        for order in ("calls", "cost"):
            board.top_tenants[order] = usage_breakdown(month, by="tenant", order=order, limit=top)
            board.top_models[order] = usage_breakdown(month, by="model", order=order, limit=top)
    return board
