"""The usage ledger: one record per /v1 call that reached an upstream or was refused for a known tenant, written
without slowing responses: queued in memory and bulk-inserted in the background.

Statuses (README "Usage ledger"): `ok`; `error` (an upstream was called and failed, or its answer could not be
read); `client_closed` (the client went away: a stream counts what was delivered, a non-streamed call runs on
and counts what the provider reports); `refused` (the gateway answered itself: invalid body, model unknown or
not allowed, no usable credential, provider paused, rate limit, budget). When the provider reported no usage
(a stream cut short, or a provider that sends none), tokens are counted with LiteLLM's token counter and the
record is marked `tokens_estimated`.

A writer task per event loop flushes every USAGE_FLUSH_SECONDS (or 500 records). If the process dies, at
most that window of records is lost; a database error is logged and the batch retried once. Each batch also adds
itself to the hourly roll-ups (providers/rollups.py) in the same transaction: both are written, or neither. Each
flush also writes the last_used_at of the tenant API keys and provider keys used since the last one (one UPDATE per
tenant key, one for all provider keys; never a write per call).

Cost of a record (`cost_of`): the cost the provider reported (LiteLLM's `usage.cost`, see `reported_cost`), else
the model's prices, else LiteLLM's price list for the model (looked up once per model, `list_prices`), else 0.

Month spend, for budgets (`month_spend`, asked only for tenants with a monthly_budget):
- With RATE_LIMIT_REDIS_URL, a counter per tenant and month in Redis (a hash: s = spent, t = the tenant's
  updated_at when it was seeded), shared by every worker process: each record of a budgeted tenant adds its cost
  (HINCRBYFLOAT, sent right after the record, several coalesced into one script call), and the budget check reads
  it (one script call: the process's own costs not yet sent are added in the same call), so a worker sees what
  the others spent at once. An absent counter (first budgeted call of the month, Redis restarted) or one seeded
  before the tenant last changed (its budget removed and set again: costs in between were not counted) is seeded
  from the database (the month's hourly roll-ups) and expires a day after the month. Bound: costs recorded anywhere but
  not yet written to the database (USAGE_FLUSH_SECONDS) at the moment a counter is seeded are missed. Redis
  unreachable: the process counts in process (below) and, when Redis is back, seeds again the counters whose
  increments it could not send.
- Without Redis: per process, from the database every 60 s plus this process's own records, so N workers may
  together overshoot a budget by what the others spent within that minute.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from tenants.models import TenantApiKey

from providers.models import ProviderKey, UsageHourly, UsageRecord
from providers.rollups import rollups_add

log = logging.getLogger("eneo.gateway.usage")

OK, ERROR, CLIENT_CLOSED, REFUSED = "ok", "error", "client_closed", "refused"
CLIENT_CLOSED_HTTP_STATUS = 499  # the client closed the connection before its answer ended (nginx's code for it)


ZERO = Decimal(0)
MONEY = Decimal("0.00000001")  # UsageRecord.cost's precision
LOCAL_SPEND_SECONDS = 60  # without Redis: a process reads a tenant's month spend from the database this often

_SPEND = "eneo:spend:"  # + "{tenant id}:{YYYY-MM}" (UTC): hash, s = spent this month, t = stamp of the seed

# KEYS[1]: counter. ARGV: this process's costs not yet added, the tenant's stamp. The spend, or nil when the counter
# must be seeded (absent, or seeded before the tenant's last change).
_SPEND_READ = """
local v = redis.call('HMGET', KEYS[1], 's', 't')
if not v[1] or tonumber(v[2] or '0') < tonumber(ARGV[2]) then return false end
if tonumber(ARGV[1]) ~= 0 then return redis.call('HINCRBYFLOAT', KEYS[1], 's', ARGV[1]) end
return v[1]
"""
# KEYS[1]: counter. ARGV: the month's spend in the database, the tenant's stamp, expiry (epoch s), force (1/0).
# Seeds the counter unless another process seeded it meanwhile for this stamp (SET NX, with the stamp).
_SPEND_SEED = """
local t = redis.call('HGET', KEYS[1], 't')
if ARGV[4] ~= '1' and t and tonumber(t) >= tonumber(ARGV[2]) then return redis.call('HGET', KEYS[1], 's') end
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return ARGV[1]
"""
# KEYS: counters; ARGV: the cost to add to each. A counter that does not exist is left to its seed.
_SPEND_ADD = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HINCRBYFLOAT', key, 's', ARGV[i]) end
end
return 0
"""


def month_start(now=None):
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(now) -> object:
    return (month_start(now) + timedelta(days=32)).replace(day=1)


def spend_key(tenant_id, when) -> str:
    return f"{_SPEND}{tenant_id}:{when.year:04d}-{when.month:02d}"


def _stamp(tenant) -> str:
    updated = getattr(tenant, "updated_at", None)
    return f"{updated.timestamp():.6f}" if updated is not None else "0"


def _redis_error(exc: Exception) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, (RedisError, OSError, asyncio.TimeoutError))


def _money(value) -> Decimal:
    if isinstance(value, bytes):
        value = value.decode()
    return Decimal(str(value)).quantize(MONEY)


class UsageWriter:
    """`shared`: where the Redis that worker processes share comes from (the Gateway's Limiter: `shared_redis()`,
    `shared_redis_failed(exc)`); None: budgets count per process. `metrics`: a providers.metrics.GatewayMetrics that
    counts every record (the one place gateway calls become metrics), or None."""

    def __init__(self, shared=None, metrics=None):
        self._pending: list[tuple] = []
        self._keys_used: dict[int, object] = {}
        self._provider_keys_used: set[int] = set()
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._writing: tuple | None = None  # (loop, lock): one batch at a time, so a flush returns once written
        self._spend: dict[object, tuple[float, Decimal]] = {}  # without Redis: tenant -> (read at, spent)
        self._shared = shared
        self._unsent: dict[str, Decimal] = {}  # Redis counter -> costs recorded, not yet added to it
        self._sending: dict[str, asyncio.Future] = {}  # Redis counter -> the addition under way
        self._reseed: set[str] = set()  # counters that missed costs of this process (Redis was unreachable)
        self._pusher: asyncio.Task | None = None
        self._scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> (read, seed, add)
        self._metrics = metrics

    def record(self, rec: tuple, *, budgeted: bool = False):
        """`rec` holds the values of USAGE_COLUMNS, in that order; `budgeted`: the tenant has a monthly budget (its
        cost goes to the shared month counter, when there is one)."""
        self._pending.append(rec)
        if self._metrics is not None:
            try:
                self._metrics.observe(rec)
            except Exception:  # noqa: BLE001 - a metric never costs a call its record
                log.warning("usage: could not count a record in the metrics", exc_info=True)
        tenant_id, api_key_id, cost, created_at = rec[0], rec[1], rec[8], rec[15]
        if api_key_id:
            self._keys_used[api_key_id] = created_at
        if cost:
            spent = self._spend.get(tenant_id)
            if spent is not None:
                self._spend[tenant_id] = (spent[0], spent[1] + cost)
            if budgeted and self._shared is not None:
                key = spend_key(tenant_id, created_at)
                if self._shared.shared_redis() is None:  # none configured, or unreachable: seeded again later
                    self._reseed.add(key)
                else:
                    self._add_spend(key, cost)
        self._ensure_task()
        if len(self._pending) >= 500 and self._wake is not None:
            self._wake.set()

    def provider_key_used(self, key_id: int):
        """A call went out with this ProviderKey: its last_used_at is written by the next flush."""
        self._provider_keys_used.add(key_id)

    def _ensure_task(self):
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            # A fresh context: not the first request's (its thread-sensitive executor ends with it).
            self._task = loop.create_task(self._run(), context=contextvars.Context())

    async def _run(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=settings.USAGE_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    def refused(self, tenant_id, api_key_id, requested: str, endpoint: str, http_status: int, error_type: str,
                request_id: str):
        """A call the gateway answered itself before any model was chosen (an invalid or oversized body, a key
        without the gateway scope): a `refused` record with no tokens and no cost."""
        self.record(usage_row(tenant_id, api_key_id, requested or "", endpoint, status=REFUSED,
                              http_status=http_status, error_type=error_type, request_id=request_id))

    async def flush(self):
        """Write every record queued so far (waiting for a batch another flush is writing)."""
        loop = asyncio.get_running_loop()
        if self._writing is None or self._writing[0] is not loop:
            self._writing = (loop, asyncio.Lock())
        async with self._writing[1]:
            await self._flush()

    async def _flush(self):
        if not self._pending and not self._keys_used and not self._provider_keys_used:
            return
        batch, self._pending = self._pending, []
        keys, self._keys_used = self._keys_used, {}
        provider_keys, self._provider_keys_used = self._provider_keys_used, set()
        try:
            await sync_to_async(_write, thread_sensitive=True)(batch, keys, provider_keys)
        except Exception:  # noqa: BLE001
            log.warning("usage: writing %d record(s) failed; retrying once without deleted references", len(batch))
            try:
                await asyncio.sleep(0.2)
                await sync_to_async(_write, thread_sensitive=True)(batch, keys, provider_keys, check_references=True)
            except Exception:  # noqa: BLE001
                log.error("usage: dropped %d record(s) after a second failure", len(batch))

    # --- month spend (budgets; see the module docstring) ---------------------------------------------------
    async def month_spend(self, tenant) -> Decimal:
        """What `tenant` spent this month (UTC): shared through Redis when configured, else per process."""
        client = self._shared.shared_redis() if self._shared is not None else None
        if client is not None:
            try:
                return await self._shared_spend(client, tenant)
            except Exception as exc:  # noqa: BLE001 - a Redis failure: count in process meanwhile
                if not _redis_error(exc):
                    raise
                self._reseed.add(spend_key(tenant.pk, timezone.now()))
                self._shared.shared_redis_failed(exc)
        return await self._local_spend(tenant)

    async def _local_spend(self, tenant) -> Decimal:
        cached = self._spend.get(tenant.pk)
        if cached is not None and time.monotonic() - cached[0] < LOCAL_SPEND_SECONDS:
            return cached[1]
        total = await sync_to_async(_spend_from_db, thread_sensitive=True)(tenant.pk)
        total += sum((r[8] for r in self._pending if r[0] == tenant.pk), ZERO)
        self._spend[tenant.pk] = (time.monotonic(), total)
        return total

    def _scripts_for(self, client) -> tuple:
        scripts = self._scripts.get(client)
        if scripts is None:
            scripts = self._scripts[client] = tuple(client.register_script(src)
                                                    for src in (_SPEND_READ, _SPEND_SEED, _SPEND_ADD))
        return scripts

    async def _shared_spend(self, client, tenant) -> Decimal:
        now = timezone.now()
        key, stamp = spend_key(tenant.pk, now), _stamp(tenant)
        read, seed, _ = self._scripts_for(client)
        sending = self._sending.get(key)
        if sending is not None and sending.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(sending)  # this process's last costs are being added: count them once
        if key not in self._reseed:
            unsent = self._unsent.pop(key, ZERO)
            try:
                value = await read(keys=[key], args=[f"{unsent:f}", stamp])
            except BaseException:
                self._unsent[key] = self._unsent.get(key, ZERO) + unsent
                raise
            if value is not None:
                return _money(value)
        total = await sync_to_async(_spend_from_db, thread_sensitive=True)(tenant.pk, month_start(now))
        force = "1" if key in self._reseed else "0"
        if force == "1":
            self._unsent.pop(key, None)  # `total` has them, or misses them as the bound above says
        value = await seed(keys=[key], args=[f"{total:f}", stamp, int(_next_month(now).timestamp()) + 86400, force])
        self._reseed.discard(key)
        return _money(value)

    def _add_spend(self, key: str, cost: Decimal):
        """Queue a record's cost for its month counter; one task per event loop sends what is queued."""
        self._unsent[key] = self._unsent.get(key, ZERO) + cost
        loop = asyncio.get_running_loop()
        if self._pusher is None or self._pusher.done() or self._pusher.get_loop() is not loop:
            self._pusher = loop.create_task(self._push(), context=contextvars.Context())

    async def _push(self):
        while self._unsent:
            batch, self._unsent = self._unsent, {}
            sent = asyncio.get_running_loop().create_future()
            for key in batch:
                self._sending[key] = sent
            try:
                client = self._shared.shared_redis()
                if client is None:  # Redis unreachable: counted in process; seeded again once it is back
                    self._reseed.update(batch)
                else:
                    await self._scripts_for(client)[2](keys=list(batch), args=[f"{v:f}" for v in batch.values()])
            except Exception as exc:  # noqa: BLE001
                self._reseed.update(batch)
                self._shared.shared_redis_failed(exc)
            finally:
                for key in batch:
                    if self._sending.get(key) is sent:
                        del self._sending[key]
                sent.set_result(None)


USAGE_COLUMNS = ("tenant_id", "api_key_id", "provider_id", "model_id", "requested_model", "endpoint", "tokens_in",
                 "tokens_out", "cost", "latency_ms", "ttft_ms", "status", "http_status", "error_type", "streamed",
                 "created_at", "tokens_estimated", "request_id")


def usage_row(tenant_id, api_key_id, requested, endpoint: str, *, status: str, http_status: int, request_id: str,
              model=None, tokens_in: int = 0, tokens_out: int = 0, cost: Decimal = Decimal(0), latency_ms: int = 0,
              ttft_ms: int | None = None, error_type: str = "", streamed: bool = False,
              estimated: bool = False) -> tuple:
    """One record's values, in USAGE_COLUMNS order (what UsageWriter.record takes)."""
    return (tenant_id, api_key_id, model.provider_id if model else None, model.pk if model else None,
            str(requested)[:200], endpoint[:30], tokens_in, tokens_out, cost, latency_ms, ttft_ms, status, http_status,
            (error_type or "")[:60], streamed, timezone.now(), estimated, request_id)


def _existing(model, ids: set) -> set:
    return set(model.objects.filter(pk__in=ids).values_list("pk", flat=True)) if ids else set()


def _drop_dangling(batch: list[tuple]) -> list[tuple]:
    """Rows whose tenant was deleted meanwhile are dropped; a deleted key, provider or model becomes NULL (as
    SET_NULL would have done), so one deletion never costs the other rows of the batch."""
    from tenants.models import Tenant

    from providers.models import AIModel, Provider

    tenants = _existing(Tenant, {r[0] for r in batch})
    keys = _existing(TenantApiKey, {r[1] for r in batch if r[1]})
    providers = _existing(Provider, {r[2] for r in batch if r[2]})
    models = _existing(AIModel, {r[3] for r in batch if r[3]})
    return [(r[0], r[1] if r[1] in keys else None, r[2] if r[2] in providers else None,
             r[3] if r[3] in models else None, *r[4:]) for r in batch if r[0] in tenants]


def _write(batch: list[tuple], keys: dict, provider_keys=(), *, check_references: bool = False):
    """One executemany per batch (cheaper than building a model instance per call), and one upsert per roll-up key."""
    close_old_connections()
    if check_references:
        batch = _drop_dangling(batch)
    if batch:
        table = UsageRecord._meta.db_table
        fields = [UsageRecord._meta.get_field(c) for c in USAGE_COLUMNS]  # get_field accepts attnames
        with transaction.atomic(), connection.cursor() as cursor:  # a batch is written whole or not at all
            rows = [[f.get_db_prep_save(v, connection) for f, v in zip(fields, row)] for row in batch]
            cursor.executemany(
                f"INSERT INTO {connection.ops.quote_name(table)} ({', '.join(map(connection.ops.quote_name, USAGE_COLUMNS))}) "
                f"VALUES ({', '.join(['%s'] * len(USAGE_COLUMNS))})", rows)
            rollups_add(cursor, batch)  # the hourly roll-ups, in the same transaction (providers/rollups.py)
    for key_id, used_at in keys.items():
        TenantApiKey.objects.filter(pk=key_id).update(last_used_at=used_at)
    if provider_keys:  # one UPDATE for every provider key used since the last flush (the flush's time)
        ProviderKey.objects.filter(pk__in=list(provider_keys)).update(last_used_at=timezone.now())


def month_spent(tenant_id, since=None) -> Decimal:
    """The month's spend (UTC) as written to the ledger so far (records reach it within USAGE_FLUSH_SECONDS): from
    the hourly roll-ups (a month starts on an hour), which retention never deletes."""
    total = UsageHourly.objects.filter(tenant_id=tenant_id, hour__gte=since or month_start()
                                       ).aggregate(s=Sum("cost"))["s"]
    return (total or ZERO).quantize(MONEY)


def _spend_from_db(tenant_id, since=None) -> Decimal:
    close_old_connections()
    return month_spent(tenant_id, since)


# --- cost -------------------------------------------------------------------------------------------------------

def reported_cost(usage) -> Decimal | None:
    """The cost a provider reported, as LiteLLM passes it on in an answer's `usage.cost` (USD: OpenRouter's number,
    Perplexity's {"total_cost": ...}, xAI's ticks converted), or None.

    Only where LiteLLM puts nothing of its own there: a non-streamed answer's usage is built from the provider's
    body alone (litellm_core_utils/llm_response_utils: Usage(**response["usage"])), but the usage of a stream's last
    chunk is stamped with LiteLLM's own estimate when the provider reported none
    (streaming_chunk_builder_utils._stamp_streaming_usage_cost); for streams use `stream_reported_cost`.
    (_hidden_params["response_cost"] is always LiteLLM's estimate, never the provider's.)"""
    value = usage.get("total_cost") if isinstance(usage, dict) else usage
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        cost = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return cost.quantize(MONEY) if cost.is_finite() and cost >= 0 else None


def stream_reported_cost(stream) -> Decimal | None:
    """The provider-reported cost of a finished LiteLLM stream: from the chunks as the provider sent them (the
    stream's `chunks`; a text completion stream wraps a chat one), not from the last chunk LiteLLM yields (see
    `reported_cost`)."""
    chunks = getattr(stream, "chunks", None)
    if chunks is None:
        chunks = getattr(getattr(stream, "completion_stream", None), "chunks", None)
    for chunk in reversed(chunks or ()):
        usage = getattr(chunk, "usage", None) if not isinstance(chunk, dict) else chunk.get("usage")
        if usage:
            return reported_cost(usage.get("cost") if isinstance(usage, dict) else getattr(usage, "cost", None))
    return None


_list_prices: dict[tuple[str, str], tuple[Decimal, Decimal] | None] = {}


def list_prices(provider_type: str, model_id: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) price per million tokens from LiteLLM's price list (litellm.model_cost, by way of
    provider_types.known_model), or None when it has none: looked up once per model, then a dict lookup."""
    try:
        return _list_prices[(provider_type, model_id)]
    except KeyError:
        pass
    from providers.provider_types import known_model

    try:
        known = known_model(provider_type, model_id)
    except Exception:  # noqa: BLE001 - a type LiteLLM does not know: no list price
        known = None
    prices = None
    if known is not None and (known.input_cost_per_million is not None or known.output_cost_per_million is not None):
        prices = (known.input_cost_per_million or ZERO, known.output_cost_per_million or ZERO)
    _list_prices[(provider_type, model_id)] = prices
    return prices


def cost_of(model, tokens_in: int, tokens_out: int, reported=None) -> Decimal:
    """The provider-reported cost (`reported`, see `reported_cost`) when present; else tokens x the model's prices
    per million (a price set to 0 counts: a free model); else x LiteLLM's list prices; else 0."""
    if reported is not None:
        cost = reported if isinstance(reported, Decimal) else reported_cost(reported)
        if cost is not None:
            return cost
    if model is None or not (tokens_in or tokens_out):
        return ZERO
    price_in, price_out = model.input_cost_per_million, model.output_cost_per_million
    if price_in is None and price_out is None:
        prices = list_prices(model.provider.provider_type, model.model_id)
        if prices is None:
            return ZERO
        price_in, price_out = prices
    total = tokens_in * (price_in or ZERO) + tokens_out * (price_out or ZERO)
    return (total / 1_000_000).quantize(MONEY)


# Token counts without the provider's: only when it reported none (see the module docstring), never on the usual path.
_THREAD_ABOVE_CHARS = 20_000  # larger inputs are counted in a thread, off the event loop


def _counting_model(name: str) -> str:
    """The model name for LiteLLM's token counter, or "" (its default tiktoken encoding) when the name would make
    it fetch a HuggingFace tokenizer over the network (Llama, Cohere...): the gateway never waits on that."""
    from litellm import utils

    kind = getattr(utils, "huggingface_tokenizer_kind", None)
    return name if kind is not None and kind(name) is None else ""


def _count(model_name: str, messages, text: str | None) -> int:
    from providers.llm import litellm

    try:
        if messages is not None:  # images count as LiteLLM's default size: their URLs are never fetched
            return int(litellm.token_counter(model=_counting_model(model_name), messages=messages,
                                             use_default_image_token_count=True))
        if text:
            return int(litellm.token_counter(model=_counting_model(model_name), text=text,
                                             count_response_tokens=True))
    except Exception:  # noqa: BLE001 - an estimate never fails a call or loses its record
        log.warning("usage: could not count the tokens of a %s call", model_name[:100], exc_info=True)
    return 0


def _size(messages) -> int:
    try:
        return sum(len(str(m.get("content") or "")) for m in messages)
    except (AttributeError, TypeError):
        return 0


async def estimate_tokens(model_name: str, *, messages=None, text: str | None = None) -> int:
    """Tokens of a prompt (`messages`) or of a completion's text, as LiteLLM's token counter sees them."""
    size = _size(messages) if messages is not None else len(text or "")
    if size > _THREAD_ABOVE_CHARS:
        return await asyncio.to_thread(_count, model_name, messages, text)
    return _count(model_name, messages, text)
