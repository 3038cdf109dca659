"""The usage ledger at scale on PostgreSQL: roll-ups, summaries, the admin list and retention over 10 million rows.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/eneo_usage_bench \
        .venv/bin/python bench/usage_scale_bench.py [--rows 10000000] [--tenants 300] [--days 120] \
        [--delete 1000000] [--keep]

Creates the database (dropped first when it exists; --keep reuses one already seeded), migrates, seeds tenants (two
API keys each), 6 providers with 2 models each, then N usage rows with INSERT ... SELECT FROM generate_series (in
1M-row statements): spread evenly over --days days (ids follow time, as the writer makes them), tenants skewed (tenant
#k gets a share ~ 1/sqrt(k): a few large tenants, a long tail), each tenant on 3 models, 95 % ok / 3 % error / 1 %
refused / 1 % client_closed, log-normal latencies. Roll-ups: `rollups_rebuild` (the management command's service).
VACUUM ANALYZE, then times (median of 7 after a warm-up):

- the REST usage summary (GET /api/v1/usage/summary?since=<30 days ago>) for the largest tenant, through Django's
  test client with that tenant's API key: roll-ups for the whole hours, raw rows for the partial first hour;
- the admin usage list (GET /admin/providers/usagerecord/) as a superuser, through Django's test client: the page's
  100 rows (no count), totals, charts and breakdowns (roll-ups), the filters;
- retention deleting --delete rows (USAGE_RETENTION_DAYS set so that about that many are older) while another
  thread records usage rows through a UsageWriter (record + flush, as the gateway does) without pause: rows/s of
  both, flush latencies, insert errors (log records of eneo.gateway.usage at WARNING or above, and rows missing).

EXPLAIN (ANALYZE, BUFFERS) of the summary's and the list's queries goes to bench/results/usage_scale_plans.txt, the
figures to bench/results/usage_scale.json.
"""
import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def database(url: str, keep: bool):
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and keep:
            return False
        if exists:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return True


def setup_django(url: str):
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "eneo_site.test_settings"
    os.environ.setdefault("TEST_LOG_LEVEL", "WARNING")
    os.environ["USAGE_RETENTION_DAYS"] = "0"
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["*"]
    settings.DEBUG = False


def seed(rows: int, tenants: int, days: int):
    from django.contrib.auth import get_user_model
    from django.db import connection

    from providers.models import AIModel, Provider
    from tenants.actors import SYSTEM
    from tenants.api_keys import api_key_create
    from tenants.models import Tenant

    started = time.perf_counter()
    made = Tenant.objects.bulk_create([Tenant(name=f"Tenant {i:04d}", slug=f"tenant-{i:04d}") for i in range(tenants)])
    keys = []
    for t in made:
        for k in range(2):
            keys.append(api_key_create(actor=SYSTEM, tenant=t, name=f"app {k}", scopes=["usage:ReadUsage"]))
    providers = Provider.objects.bulk_create([Provider(name=f"Provider {i}", provider_type="openai",
                                                       base_url=f"https://p{i}.example.com/v1", instance_wide=True)
                                              for i in range(6)])
    models = AIModel.objects.bulk_create([AIModel(provider=p, model_id=f"model-{p.pk}-{j}", alias="")
                                          for p in providers for j in range(2)])
    get_user_model().objects.create_superuser("bench-admin", "admin@example.com", "x")
    tenant_ids = [str(t.pk) for t in made]
    key_ids = [k.api_key.pk for k in keys]  # tenant i: keys 2i, 2i+1
    model_ids = [m.pk for m in models]
    model_providers = [m.provider_id for m in models]
    chunk = 1_000_000
    with connection.cursor() as cursor:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            # g: row number; t: the tenant (skewed: floor(T * u^2) gives tenant k a share ~ 1/sqrt(k)); s: status draw
            cursor.execute(f"""
                INSERT INTO providers_usagerecord (tenant_id, api_key_id, provider_id, model_id, requested_model,
                    endpoint, tokens_in, tokens_out, cost, latency_ms, ttft_ms, status, http_status, error_type,
                    streamed, created_at, tokens_estimated, request_id)
                SELECT (%(tenants)s::uuid[])[t + 1], (%(keys)s::bigint[])[2 * t + k + 1],
                       (%(providers)s::bigint[])[m + 1], (%(models)s::bigint[])[m + 1], 'model-' || m, CASE WHEN m %% 6 = 5 THEN 'embeddings'
                       ELSE 'chat.completions' END, ti, tout, (ti + 4 * tout) * 0.000001, lat, NULL,
                       CASE WHEN s < 0.95 THEN 'ok' WHEN s < 0.98 THEN 'error' WHEN s < 0.99 THEN 'refused'
                       ELSE 'client_closed' END,
                       CASE WHEN s < 0.95 THEN 200 WHEN s < 0.98 THEN 502 WHEN s < 0.99 THEN 429 ELSE 499 END,
                       CASE WHEN s < 0.95 THEN '' WHEN s < 0.98 THEN 'upstream_error' WHEN s < 0.99 THEN 'rate_limited'
                       ELSE 'client_closed' END, k = 1 AND m %% 6 <> 5,
                       now() - interval '{days} days' + (g::float8 / %(rows)s) * interval '{days} days',
                       false, md5(g::text)
                FROM (SELECT g, t, k, (t * 3 + floor(random() * 3)::int) %% 12 AS m, random() AS s,
                             (50 + random() * 1500)::int AS ti, (random() * 600)::int AS tout,
                             least(120000, floor(exp(5.3 + random() * 1.2 + random() * 1.2)))::int AS lat
                      FROM (SELECT g, floor(%(ntenants)s * power(random(), 2))::int AS t,
                                   (random() < 0.5)::int AS k
                            FROM generate_series(%(first)s, %(last)s) AS g) AS drawn) AS picked
                """, {"tenants": tenant_ids, "keys": key_ids, "providers": model_providers, "models": model_ids,
                      "rows": rows, "ntenants": tenants, "first": start, "last": start + n - 1})
            print(f"  {start + n:>11,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"tenants": tenants, "keys": len(keys), "models": len(models),
            "seconds": round(time.perf_counter() - started, 1)}


def vacuum():
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("providers_usagerecord", "providers_usagehourly"):
            cursor.execute(f"VACUUM ANALYZE {table}")


def timed(fn, repeat: int = 7) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1)}


def explain(fn, title: str, out: list, limit: int = 6):
    """EXPLAIN (ANALYZE, BUFFERS) of the `limit` slowest queries `fn` runs."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        fn()
    queries = sorted(ctx.captured_queries, key=lambda q: -float(q["time"]))[:limit]
    out.append(f"==== {title}: {len(ctx.captured_queries)} queries; the {len(queries)} slowest ====\n")
    with connection.cursor() as cursor:
        for q in queries:
            if not q["sql"].lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + q["sql"])
            out.append(f"-- {q['time']} s\n{q['sql']}\n" + "\n".join(r[0] for r in cursor.fetchall()) + "\n\n")
    return len(ctx.captured_queries)


class ErrorCount(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


def retention_under_writes(delete: int, total: int, days: int) -> dict:
    """Retention deleting about `delete` rows while a UsageWriter keeps recording and flushing rows."""
    from django.conf import settings
    from django.db import connections

    from providers.gateway.usage import UsageWriter, usage_row
    from providers.models import AIModel, UsageRecord
    from providers.rollups import usage_retention_run
    from tenants.models import Tenant

    keep_days = days - days * delete / total
    settings.USAGE_RETENTION_DAYS = int(keep_days)  # whole days: about `delete` rows are older
    tenant = Tenant.objects.order_by("-slug").first()  # a small tenant: the summary's (the largest) stays as it was
    model = AIModel.objects.select_related("provider").first()
    errors = ErrorCount()
    logging.getLogger("eneo.gateway.usage").addHandler(errors)
    before = UsageRecord.objects.count()
    stop = threading.Event()
    stats = {"recorded": 0, "flushes": []}

    async def writer():
        w = UsageWriter()
        while not stop.is_set():
            for _ in range(100):
                w.record(usage_row(tenant.pk, None, "bench", "chat.completions", status="ok", http_status=200,
                                   request_id="bench", model=model, tokens_in=10, tokens_out=5, latency_ms=120))
            stats["recorded"] += 100
            started = time.perf_counter()
            await w.flush()
            stats["flushes"].append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        await w.flush()

    def run_writer():
        asyncio.run(writer())
        connections.close_all()

    thread = threading.Thread(target=run_writer)
    started = time.perf_counter()
    thread.start()
    time.sleep(1)
    deleted_at = time.perf_counter()
    deleted = usage_retention_run(max_seconds=0)
    delete_seconds = time.perf_counter() - deleted_at
    time.sleep(1)
    stop.set()
    thread.join()
    write_seconds = time.perf_counter() - started
    logging.getLogger("eneo.gateway.usage").removeHandler(errors)
    after = UsageRecord.objects.count()
    flushes = sorted(stats["flushes"])
    missing = before - deleted + stats["recorded"] - after
    return {"retention_days": settings.USAGE_RETENTION_DAYS, "deleted": deleted,
            "delete_seconds": round(delete_seconds, 1), "deleted_per_second": round(deleted / delete_seconds),
            "batch": settings.USAGE_RETENTION_BATCH, "pause_s": settings.USAGE_RETENTION_PAUSE,
            "inserted": stats["recorded"], "inserted_per_second": round(stats["recorded"] / write_seconds),
            "insert_errors": errors.count, "rows_missing": missing,
            "flush_ms_p50": round(flushes[len(flushes) // 2], 1),
            "flush_ms_p99": round(flushes[int(len(flushes) * 0.99)], 1), "flush_ms_max": round(flushes[-1], 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--delete", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="Reuse a seeded database (no drop, no seeding).")
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:55432/eneo_usage_bench")
    fresh = database(url, args.keep)
    setup_django(url)
    from django.core.management import call_command
    from django.db.models import Count
    from django.test import Client
    from django.utils import timezone

    from providers.models import UsageHourly, UsageRecord
    from providers.rollups import rollups_rebuild
    from tenants.models import Tenant

    result = {"rows": args.rows, "days": args.days}
    if fresh:
        call_command("migrate", verbosity=0)
        print("seeding ...", flush=True)
        result["seed"] = seed(args.rows, args.tenants, args.days)
        started = time.perf_counter()
        done = rollups_rebuild(chunk_hours=24 * 7)
        result["rollup_rebuild"] = {"rows": done["rows"], "seconds": round(time.perf_counter() - started, 1)}
        print(f"roll-ups: {done['rows']:,} rows in {result['rollup_rebuild']['seconds']} s", flush=True)
        vacuum()
    result["raw_rows"] = UsageRecord.objects.count()
    result["rollup_rows"] = UsageHourly.objects.count()

    plans: list[str] = []
    top = (UsageRecord.objects.values("tenant_id").annotate(n=Count("id")).order_by("-n").first())
    tenant = Tenant.objects.get(pk=top["tenant_id"])
    from tenants.actors import SYSTEM
    from tenants.api_keys import api_key_create

    key = api_key_create(actor=SYSTEM, tenant=tenant, name="bench reader", scopes=["usage:ReadUsage"]).plaintext
    since = (timezone.now() - timezone.timedelta(days=30)).isoformat()
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    def summary():
        r = client.get("/api/v1/usage/summary", {"since": since}, **headers)
        assert r.status_code == 200, r.content[:300]
        return r.json()

    calls = sum(m["calls"] for m in summary()["models"])
    result["summary"] = {"tenant_rows_total": top["n"], "calls_30_days": calls, **timed(summary)}
    print("summary:", result["summary"], flush=True)
    explain(summary, "REST summary, 30 days, largest tenant", plans)

    admin = Client()
    from django.contrib.auth import get_user_model

    admin.force_login(get_user_model().objects.get(username="bench-admin"))

    def admin_list():
        r = admin.get("/admin/providers/usagerecord/")
        assert r.status_code == 200
        return r

    result["admin_list"] = timed(admin_list)
    result["admin_list"]["queries"] = explain(admin_list, "admin usage list, superuser, no filter", plans, limit=10)
    print("admin list:", result["admin_list"], flush=True)

    def admin_tenant_list():
        assert admin.get("/admin/providers/usagerecord/", {"tenant__id__exact": str(tenant.pk)}).status_code == 200

    result["admin_list_one_tenant"] = timed(admin_tenant_list)
    print("admin list, one tenant:", result["admin_list_one_tenant"], flush=True)

    def admin_page_50():
        assert admin.get("/admin/providers/usagerecord/", {"p": 50}).status_code == 200

    result["admin_list_page_50"] = timed(admin_page_50, repeat=3)

    print("retention ...", flush=True)
    result["retention"] = retention_under_writes(args.delete, args.rows, args.days)
    print("retention:", result["retention"], flush=True)
    after = summary()
    result["summary_after_retention_equal"] = sum(m["calls"] for m in after["models"]) == calls
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "usage_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "usage_scale_plans.txt").write_text("".join(plans))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
