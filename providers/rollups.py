"""Usage at scale: hourly roll-ups of the usage ledger, their rebuild from raw records, and retention of raw records.

Roll-ups (UsageHourly): one row per hour (UTC), tenant, API key, provider, model, requested model, endpoint, streamed
and status, with calls, errors, tokens, cost, the latency sum, min, max and a fixed-bucket histogram
(models.LATENCY_BUCKETS_MS). The usage writer adds each batch to them in the transaction that inserts the raw
records (`rollups_add`: an upsert, INSERT ... ON CONFLICT DO UPDATE SET calls = calls + EXCLUDED.calls ..., on
PostgreSQL and SQLite alike), so a crash never leaves the two disagreeing. Summaries, budgets and the dashboard read
them; raw records remain for the list, the CSV export and what a roll-up cannot answer (a time range that does not
start or end on an hour: its edges; a search or an HTTP-status filter in the admin list).

Latency percentiles from roll-ups are estimates (`histogram_percentile`): the rank is found in the histogram, then
interpolated linearly inside its bucket, the bucket narrowed to the calls' min and max. Exact in count, within one
bucket's width in value (25 ms up to 100 ms, 100 ms up to 300 ms, ... 50 % above 1 s at most).

Rebuild (`rollups_rebuild`, command `usage_rollups_rebuild`): replaces the roll-ups of a time range with the
aggregate of its raw records, a chunk of hours per transaction. On PostgreSQL each chunk locks the roll-up table
against writes (SHARE ROW EXCLUSIVE) while it deletes and re-inserts, so a writer's upsert waits for the chunk (its
raw rows are then counted once: by the rebuild if committed before, by its own upsert if not). Hours that
retention has (partly) emptied are never rebuilt: their roll-ups are all that is left.

Retention (`usage_retention_run`, beat task, hourly): raw records older than USAGE_RETENTION_DAYS (0 = kept for ever)
are deleted oldest first, USAGE_RETENTION_BATCH ids at a time by primary key, each batch its own short transaction
with USAGE_RETENTION_PAUSE seconds between batches: inserts never wait on it (row locks only, on old rows).
"""
from __future__ import annotations

import logging
import time
from bisect import bisect_left
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min
from django.utils import timezone

from providers.models import LATENCY_BUCKETS_MS, LATENCY_FIELDS, UsageHourly, UsageRecord

log = logging.getLogger("eneo.usage.rollups")

KEY = ("hour", "tenant_id", "api_key_id", "provider_id", "model_id", "requested_model", "endpoint", "streamed",
       "status")
SUMS = ("calls", "errors", "tokens_in", "tokens_out", "cost", "latency_ms_sum", *LATENCY_FIELDS)
COLUMNS = (*KEY, *SUMS, "latency_ms_min", "latency_ms_max")
HOUR = timedelta(hours=1)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def latency_bucket(latency_ms: int) -> int:
    """The histogram bucket of a latency: the first bound it does not exceed (the last bucket beyond them all)."""
    return bisect_left(LATENCY_BUCKETS_MS, latency_ms)


# --- the writer's side ------------------------------------------------------------------------------------------

def rollup_rows(batch: list[tuple]) -> list[tuple]:
    """A batch of usage rows (values in providers.gateway.usage.USAGE_COLUMNS order) as roll-up rows (COLUMNS order),
    aggregated per key and sorted by it (concurrent writers then lock the same rows in the same order)."""
    groups: dict[tuple, list] = {}
    nbuckets = len(LATENCY_FIELDS)
    for r in batch:
        latency = int(r[9] or 0)
        key = (floor_hour(r[15]), r[0], r[1] or 0, r[2] or 0, r[3] or 0, r[4], r[5], bool(r[14]), r[11])
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = [0, 0, 0, 0, Decimal(0), 0, *([0] * nbuckets), latency, latency]
        acc[0] += 1
        acc[1] += r[11] == "error"
        acc[2] += int(r[6] or 0)
        acc[3] += int(r[7] or 0)
        acc[4] += Decimal(r[8] or 0)
        acc[5] += latency
        acc[6 + latency_bucket(latency)] += 1
        acc[-2] = min(acc[-2], latency)
        acc[-1] = max(acc[-1], latency)
    return [(*key, *groups[key]) for key in sorted(groups, key=lambda k: tuple(str(v) for v in k))]


def _upsert_sql() -> str:
    q = connection.ops.quote_name
    table = q(UsageHourly._meta.db_table)
    sums = ", ".join(f"{q(c)} = {table}.{q(c)} + EXCLUDED.{q(c)}" for c in SUMS)
    low, high = q("latency_ms_min"), q("latency_ms_max")
    return (f"INSERT INTO {table} ({', '.join(map(q, COLUMNS))}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
            f"ON CONFLICT ({', '.join(map(q, KEY))}) DO UPDATE SET {sums}, "
            f"{low} = CASE WHEN EXCLUDED.{low} < {table}.{low} THEN EXCLUDED.{low} ELSE {table}.{low} END, "
            f"{high} = CASE WHEN EXCLUDED.{high} > {table}.{high} THEN EXCLUDED.{high} ELSE {table}.{high} END")


def rollups_add(cursor, batch: list[tuple]):
    """Add a batch of usage rows to the roll-ups: one upsert per key, on `cursor` (the raw insert's transaction)."""
    rows = rollup_rows(batch)
    if not rows:
        return
    fields = [UsageHourly._meta.get_field(c) for c in COLUMNS]
    cursor.executemany(_upsert_sql(), [[f.get_db_prep_save(v, connection) for f, v in zip(fields, row)]
                                       for row in rows])


# --- rebuild ----------------------------------------------------------------------------------------------------

def _rebuild_sql() -> str:
    q = connection.ops.quote_name
    raw = q(UsageRecord._meta.db_table)
    latency = q("latency_ms")
    if connection.vendor == "postgresql":
        hour = f"date_trunc('hour', {q('created_at')} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:  # SQLite keeps UTC datetimes as text: "YYYY-MM-DD HH:MM:SS[.ffffff]"
        hour = f"strftime('%%Y-%%m-%%d %%H:00:00', {q('created_at')})"
    buckets, low = [], None
    for bound in (*LATENCY_BUCKETS_MS, None):
        cond = " AND ".join(c for c in (f"{latency} > {low}" if low is not None else "",
                                        f"{latency} <= {bound}" if bound is not None else "") if c)
        buckets.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
        low = bound
    select = (f"{hour}, {q('tenant_id')}, COALESCE({q('api_key_id')}, 0), COALESCE({q('provider_id')}, 0), "
              f"COALESCE({q('model_id')}, 0), {q('requested_model')}, {q('endpoint')}, {q('streamed')}, {q('status')}, "
              f"COUNT(*), SUM(CASE WHEN {q('status')} = 'error' THEN 1 ELSE 0 END), SUM({q('tokens_in')}), "
              f"SUM({q('tokens_out')}), SUM({q('cost')}), SUM({latency}), {', '.join(buckets)}, "
              f"MIN({latency}), MAX({latency})")
    return (f"INSERT INTO {q(UsageHourly._meta.db_table)} ({', '.join(map(q, COLUMNS))}) "
            f"SELECT {select} FROM {raw} WHERE {q('created_at')} >= %s AND {q('created_at')} < %s "
            f"GROUP BY {', '.join(str(i) for i in range(1, len(KEY) + 1))}")


def retention_cutoff(now=None) -> datetime | None:
    """Raw records before this moment are deleted by retention (None: USAGE_RETENTION_DAYS = 0, kept for ever)."""
    days = settings.USAGE_RETENTION_DAYS
    return None if days <= 0 else (now or timezone.now()) - timedelta(days=days)


def rollups_rebuild(*, since: datetime | None = None, until: datetime | None = None, chunk_hours: int = 24,
                    now=None) -> dict:
    """Replace the roll-ups of [since, until) (widened to whole hours; default: from the oldest raw record to now)
    by the aggregate of the raw records, `chunk_hours` per transaction. Hours retention has reached are skipped.
    Returns {"since", "until", "hours", "rows"}."""
    now = now or timezone.now()
    if since is None:
        since = UsageRecord.objects.aggregate(first=Min("created_at"))["first"] or now
    start, end = floor_hour(since), ceil_hour(until or now + HOUR)
    cutoff = retention_cutoff(now)
    if cutoff is not None:
        start = max(start, ceil_hour(cutoff))
    field = UsageRecord._meta.get_field("created_at")
    rows = hours = 0
    sql = _rebuild_sql()
    a = start
    while a < end:
        b = min(a + chunk_hours * HOUR, end)
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"LOCK TABLE {connection.ops.quote_name(UsageHourly._meta.db_table)} "
                               "IN SHARE ROW EXCLUSIVE MODE")
            UsageHourly.objects.filter(hour__gte=a, hour__lt=b).delete()
            cursor.execute(sql, [field.get_db_prep_value(a, connection), field.get_db_prep_value(b, connection)])
            rows += max(cursor.rowcount, 0)
        hours += int((b - a) / HOUR)
        a = b
    return {"since": start, "until": max(start, end), "hours": hours, "rows": rows}


# --- retention ---------------------------------------------------------------------------------------------------

def usage_retention_run(*, now=None, batch_size: int | None = None, pause: float | None = None,
                        max_seconds: float | None = None) -> int:
    """Delete raw usage records older than USAGE_RETENTION_DAYS, oldest first, `batch_size` ids per transaction
    (USAGE_RETENTION_BATCH), sleeping `pause` seconds between batches (USAGE_RETENTION_PAUSE), for at most
    `max_seconds` (USAGE_RETENTION_MAX_SECONDS; the next run goes on). Roll-ups are kept. Returns the rows deleted."""
    cutoff = retention_cutoff(now)
    if cutoff is None:
        return 0
    batch_size = batch_size or settings.USAGE_RETENTION_BATCH
    pause = settings.USAGE_RETENTION_PAUSE if pause is None else pause
    max_seconds = settings.USAGE_RETENTION_MAX_SECONDS if max_seconds is None else max_seconds
    started, deleted = time.monotonic(), 0
    expired = UsageRecord.objects.filter(created_at__lt=cutoff).order_by("created_at", "id")
    while True:
        ids = list(expired.values_list("id", flat=True)[:batch_size])
        if not ids:
            break
        with transaction.atomic():  # its own transaction, even inside a caller's autocommit block
            deleted += UsageRecord.objects.filter(pk__in=ids)._raw_delete(UsageRecord.objects.db)
        if len(ids) < batch_size or (max_seconds and time.monotonic() - started >= max_seconds):
            break
        if pause:
            time.sleep(pause)
    if deleted:
        log.info("usage retention: deleted %d raw record(s) before %s", deleted, cutoff.isoformat())
    return deleted


def rollup_span() -> tuple[datetime | None, datetime | None]:
    """(first hour, last hour) held in the roll-ups."""
    span = UsageHourly.objects.aggregate(first=Min("hour"), last=Max("hour"))
    return span["first"], span["last"]


# --- estimates ---------------------------------------------------------------------------------------------------

def histogram_percentile(counts: list[int], fraction: float, low: float | None = None,
                         high: float | None = None) -> float | None:
    """An estimate of percentile_cont(`fraction`) from histogram `counts` (LATENCY_FIELDS order) and the smallest and
    largest latency seen (`low`, `high`): the k-th smallest call is placed inside its bucket as if the bucket's calls
    were spread evenly over it (the bucket narrowed to [low, high]); the first and last calls are `low` and `high`;
    between two ranks, linear interpolation as percentile_cont does."""
    total = sum(counts)
    if not total:
        return None

    def value(k: int) -> float:
        if k == 0 and low is not None:
            return float(low)
        if k == total - 1 and high is not None:
            return float(high)
        seen = 0
        for i, n in enumerate(counts):
            if k < seen + n:
                lo = 0 if i == 0 else LATENCY_BUCKETS_MS[i - 1]
                hi = LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else (high if high is not None else lo * 2)
                lo, hi = max(lo, low if low is not None else lo), min(hi, high if high is not None else hi)
                return lo + (max(hi, lo) - lo) * (k - seen + 0.5) / n
            seen += n
        return float(high or 0)

    rank = fraction * (total - 1)
    below = int(rank)
    if below + 1 >= total:
        return value(below)
    return value(below) + (value(below + 1) - value(below)) * (rank - below)
