"""Prometheus metrics (prometheus-client in multiprocess mode), served at /metrics (eneo_site.asgi).

Every process of an instance (each uvicorn worker, the Celery worker and its pool) writes its values to files in
PROMETHEUS_MULTIPROC_DIR (memory-mapped, one set per process); a scrape of any web worker adds them all up, so
the numbers do not depend on which worker answers.

What is recorded, and where (each in one place, so nothing is counted twice):
- Gateway calls: `GatewayMetrics.observe`, called by the usage ledger's `UsageWriter.record` for every record it
  takes (every /v1 call that reached an upstream or was refused for a known tenant). Labels: tenant (slug),
  provider (public id), model (public name: alias, else <type>/<model id>), status (the ledger's: ok, error,
  client_closed, refused); errors and refusals add the ledger's error_type, which is always one of the
  gateway's own codes. Never a key, a prompt or the model name a caller typed (an unknown name is "").
- The circuit breaker's state (`breaker_changed`, from providers.gateway.breaker): 1 while a provider's circuit
  is open in some live worker.
- Check outcomes (`check_done`: connectivity tests, model validations, discoveries, scheduled health checks).
- Provider health: read from the database at scrape time (`ProviderHealthCollector`, one query).

Files of dead processes: a process that exits normally drops its gauge files (`mark_process_dead`, at exit and on
Celery's worker_process_shutdown); its counters stay, so totals never go down while the instance runs. The folder
is emptied when no process that wrote into it is alive any more (checked, under a file lock, when a process
writes its first value): a restart of the whole instance starts from zero, as Prometheus expects of a restart.
"""
from __future__ import annotations

import atexit
import fcntl
import glob
import logging
import os
import threading
from contextlib import contextmanager

from django.conf import settings

# prometheus_client picks its multiprocess mode from the environment when first imported: settings set it.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", settings.PROMETHEUS_MULTIPROC_DIR)

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client import generate_latest, multiprocess, values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

log = logging.getLogger("eneo.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
LABELS = ("tenant", "provider", "model", "status")
# seconds; LLM calls run from tens of milliseconds (embeddings, cached) to minutes (long reasoning answers)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

if not values.ValueClass._multiprocess:  # prometheus_client was imported before the settings set the folder
    values.ValueClass = values.MultiProcessValue()

# registry=None: multiprocess values are read back from the files by MultiProcessCollector (`render`)
REQUESTS = Counter("eneo_gateway_requests", "Gateway calls recorded in the usage ledger.", LABELS, registry=None)
ERRORS = Counter("eneo_gateway_errors", "Gateway calls whose upstream failed (ledger status error), by error type.",
                 ("tenant", "provider", "model", "error_type"), registry=None)
REFUSALS = Counter("eneo_gateway_refusals", "Calls the gateway refused itself (ledger status refused): rate "
                   "limits, budgets, paused providers, invalid requests...", ("tenant", "reason"), registry=None)
LATENCY = Histogram("eneo_gateway_request_duration_seconds", "Time from a call's arrival to its last byte.",
                    LABELS, buckets=LATENCY_BUCKETS, registry=None)
TTFT = Histogram("eneo_gateway_time_to_first_token_seconds", "Streamed calls: time to the first token.", LABELS,
                 buckets=TTFT_BUCKETS, registry=None)
TOKENS_IN = Counter("eneo_gateway_input_tokens", "Prompt tokens.", LABELS, registry=None)
TOKENS_OUT = Counter("eneo_gateway_output_tokens", "Completion tokens.", LABELS, registry=None)
COST = Counter("eneo_gateway_cost_usd", "Cost of the calls, as in the usage ledger (USD).", LABELS, registry=None)
BREAKER_OPEN = Gauge("eneo_gateway_breaker_open", "1 while the circuit of a provider (tenant: a tenant's own "
                     "credential; empty: shared keys) is open in some worker.", ("provider", "tenant"),
                     multiprocess_mode="livemax", registry=None)
BREAKER_OPENED = Counter("eneo_gateway_breaker_opened", "Times a circuit opened.", ("provider", "tenant"),
                         registry=None)
CHECKS = Counter("eneo_provider_checks", "Provider checks finished, by kind (test, validate, discover, health) "
                 "and outcome.", ("kind", "ok"), registry=None)

HEALTH_STATES = ("healthy", "degraded", "down", "unknown")


# --- the folder --------------------------------------------------------------------------------------------

_ready = False
_ready_lock = threading.Lock()


def _folder() -> str:
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _writers(folder: str) -> set[int]:
    pids = set()
    for path in glob.glob(os.path.join(folder, "*.db")):
        tail = os.path.basename(path)[:-3].rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


@contextmanager
def _folder_lock():
    folder = _folder()
    with open(os.path.join(folder, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_value(make):
    """`make()` creates this process's first metric value (and so its first file). Before that, under the
    folder's lock: when every process that wrote into the folder is gone, their files are removed (a restart of
    the instance starts its counters at zero). Creating the file under the same lock means a process that starts
    later sees this one alive."""
    global _ready
    with _ready_lock:
        if _ready:
            return make()
        with _folder_lock() as folder:
            writers = _writers(folder) - {os.getpid()}
            if writers and not any(_alive(pid) for pid in writers):
                for path in glob.glob(os.path.join(folder, "*.db")):
                    try:
                        os.remove(path)
                    except FileNotFoundError:
                        pass
                log.info("metrics: removed the files of %d stopped process(es) from %s", len(writers), folder)
            value = make()
            _ready = True
            atexit.register(process_exited)
            return value


def process_exited(pid: int | None = None):
    """A process ends: its live gauges (breaker state) no longer count."""
    try:
        multiprocess.mark_process_dead(pid or os.getpid(), _folder())
    except OSError:  # noqa: PERF203 - the folder is gone (a test session's, removed at its end)
        pass


def _child(metric, *labels):
    return _first_value(lambda: metric.labels(*labels)) if not _ready else metric.labels(*labels)


# --- gateway calls -----------------------------------------------------------------------------------------

class GatewayMetrics:
    """Records usage-ledger rows as metrics. The label children of each (tenant, model, status, error type) are
    looked up once and kept, so a call costs a dict lookup and a few memory-mapped writes.

    `names(tenant_id, model_id)` gives (tenant slug, provider public id, model public name) from the gateway's
    catalog, or None when it does not know them (then ids stand in, and the lookup is tried again next time).
    A tenant or model renamed while the process runs keeps its old label until the process restarts."""

    MAX_ENTRIES = 20_000  # label sets kept per process (then the cache starts over)

    def __init__(self, names):
        self._names = names
        self._entries: dict[tuple, tuple] = {}

    def observe(self, rec: tuple):
        """`rec`: a usage row (providers.gateway.usage.USAGE_COLUMNS order)."""
        key = (rec[0], rec[3], rec[11], rec[13])  # tenant id, model id, status, error type
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entry(key, rec[2])
        requests, latency, ttft, tokens_in, tokens_out, cost, failure = entry
        requests.inc()
        latency.observe(rec[9] / 1000)
        if rec[10] is not None:
            ttft.observe(rec[10] / 1000)
        if rec[6]:
            tokens_in.inc(rec[6])
        if rec[7]:
            tokens_out.inc(rec[7])
        if rec[8]:
            cost.inc(float(rec[8]))
        if failure is not None:
            failure.inc()

    def _entry(self, key: tuple, provider_id) -> tuple:
        tenant_id, model_id, status, error_type = key
        names = self._names(tenant_id, model_id)
        known = names is not None
        if not known:  # not in the catalog (yet): ids stand in, and the entry is not kept
            names = (str(tenant_id), f"#{provider_id}" if provider_id else "", f"#{model_id}" if model_id else "")
        labels = (*names, status)
        failure = None
        if status == "error":
            failure = _child(ERRORS, *names, error_type)
        elif status == "refused":
            failure = _child(REFUSALS, names[0], error_type)
        entry = (_child(REQUESTS, *labels), _child(LATENCY, *labels), _child(TTFT, *labels),
                 _child(TOKENS_IN, *labels), _child(TOKENS_OUT, *labels), _child(COST, *labels), failure)
        if known:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = entry
        return entry


def gateway_metrics(names) -> GatewayMetrics | None:
    """What a Gateway's usage writer records metrics with: None when METRICS_ENABLED is false."""
    return GatewayMetrics(names) if settings.METRICS_ENABLED else None


# --- breaker and checks ------------------------------------------------------------------------------------

def breaker_changed(provider: str, tenant: str, is_open: bool):
    """A circuit opened (or closed again)."""
    if not settings.METRICS_ENABLED:
        return
    _child(BREAKER_OPEN, provider, tenant).set(1 if is_open else 0)
    if is_open:
        _child(BREAKER_OPENED, provider, tenant).inc()


def check_done(kind: str, ok: bool | None, count: int = 1):
    """Checks of `kind` finished with this outcome. A metric never costs a check its result: failures are logged."""
    if settings.METRICS_ENABLED and count:
        try:
            _child(CHECKS, str(kind), "true" if ok else "false").inc(count)
        except Exception:  # noqa: BLE001 - e.g. the metrics folder was removed under a running worker
            log.warning("metrics: could not count a finished check", exc_info=True)


# --- provider health (from the database, per scrape) --------------------------------------------------------

class ProviderHealthCollector:
    """eneo_provider_health{provider, name, tenant, status}: 1 for each active provider's current health status
    (and 0 for the others), plus the latency of its last check. One query per scrape."""

    def collect(self):
        from providers.choices import ProviderStatus
        from providers.models import Provider

        health = GaugeMetricFamily("eneo_provider_health", "1 for the provider's current health status (healthy, "
                                   "degraded, down, unknown), 0 for the others.",
                                   labels=["provider", "name", "tenant", "status"])
        latency = GaugeMetricFamily("eneo_provider_health_latency_seconds", "Latency of the provider's last "
                                    "health or connectivity check.", labels=["provider", "name", "tenant"])
        rows = Provider.objects.filter(status=ProviderStatus.ACTIVE).values_list(
            "public_id", "name", "tenant__slug", "health_status", "health_latency_ms")
        for public_id, name, tenant, status, latency_ms in rows:
            for state in HEALTH_STATES:
                health.add_metric([public_id, name, tenant or "", state], 1.0 if status == state else 0.0)
            if latency_ms is not None:
                latency.add_metric([public_id, name, tenant or ""], latency_ms / 1000)
        yield health
        yield latency


def render() -> bytes:
    """The metrics of every process of this instance, in Prometheus' text format (blocking: files and one
    query; call it off the event loop)."""
    from django.db import close_old_connections

    close_old_connections()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(ProviderHealthCollector())
    try:
        return generate_latest(registry)
    except FileNotFoundError:  # a file removed while it was read (a process's gauges, at its exit): once more
        return generate_latest(registry)
