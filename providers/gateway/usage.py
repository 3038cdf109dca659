"""The usage ledger: one record per /v1 call that reached an upstream or was refused for a known tenant, written
without slowing responses: queued in memory and bulk-inserted in the background.

Statuses (README "Usage ledger"): `ok`; `error` (an upstream was called and failed, or its answer could not be
read); `client_closed` (the client went away: a stream counts what was delivered, a non-streamed call runs on
and counts what the provider reports); `refused` (the gateway answered itself: invalid body, model unknown or
not allowed, no usable credential, provider paused, rate limit, budget). When the provider reported no usage
(a stream cut short, or a provider that sends none), tokens are counted with LiteLLM's token counter and the
record is marked `tokens_estimated`.

A writer task per event loop flushes every USAGE_FLUSH_SECONDS (or 500 records). If the process dies, at
most that window of records is lost; a database error is logged and the batch retried once.
Also keeps per-tenant spend for the month (for budgets), refreshed from the database every minute.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from tenants.models import TenantApiKey

from providers.models import UsageRecord

log = logging.getLogger("eneo.gateway.usage")

OK, ERROR, CLIENT_CLOSED, REFUSED = "ok", "error", "client_closed", "refused"
CLIENT_CLOSED_HTTP_STATUS = 499  # the client closed the connection before its answer ended (nginx's code for it)


def month_start(now=None):
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class UsageWriter:
    def __init__(self):
        self._pending: list[tuple] = []
        self._keys_used: dict[int, object] = {}
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._writing: tuple | None = None  # (loop, lock): one batch at a time, so a flush returns once written
        self._spend: dict[object, tuple[float, Decimal]] = {}

    def record(self, rec: tuple):
        """`rec` holds the values of USAGE_COLUMNS, in that order."""
        self._pending.append(rec)
        tenant_id, api_key_id, cost, created_at = rec[0], rec[1], rec[8], rec[15]
        if api_key_id:
            self._keys_used[api_key_id] = created_at
        spent = self._spend.get(tenant_id)
        if spent is not None:
            self._spend[tenant_id] = (spent[0], spent[1] + (cost or Decimal(0)))
        self._ensure_task()
        if len(self._pending) >= 500 and self._wake is not None:
            self._wake.set()

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
        if not self._pending and not self._keys_used:
            return
        batch, self._pending = self._pending, []
        keys, self._keys_used = self._keys_used, {}
        try:
            await sync_to_async(_write, thread_sensitive=True)(batch, keys)
        except Exception:  # noqa: BLE001
            log.warning("usage: writing %d record(s) failed; retrying once without deleted references", len(batch))
            try:
                await asyncio.sleep(0.2)
                await sync_to_async(_write, thread_sensitive=True)(batch, keys, check_references=True)
            except Exception:  # noqa: BLE001
                log.error("usage: dropped %d record(s) after a second failure", len(batch))

    async def month_spend(self, tenant) -> Decimal:
        cached = self._spend.get(tenant.pk)
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1]
        total = await sync_to_async(_spend_from_db, thread_sensitive=True)(tenant.pk)
        total += sum((r[8] for r in self._pending if r[0] == tenant.pk), Decimal(0))
        self._spend[tenant.pk] = (time.monotonic(), total)
        return total


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


def _write(batch: list[tuple], keys: dict, *, check_references: bool = False):
    """One executemany per batch (cheaper than building a model instance per call)."""
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
    for key_id, used_at in keys.items():
        TenantApiKey.objects.filter(pk=key_id).update(last_used_at=used_at)


def _spend_from_db(tenant_id) -> Decimal:
    close_old_connections()
    total = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=month_start()).aggregate(s=Sum("cost"))["s"]
    return total or Decimal(0)


def cost_of(model, tokens_in: int, tokens_out: int, reported=None) -> Decimal:
    """Provider-reported cost when present, else tokens x price per million / 1,000,000."""
    if reported not in (None, ""):
        try:
            return Decimal(str(reported))
        except ArithmeticError:
            pass
    total = Decimal(0)
    if model is not None:
        if model.input_cost_per_million:
            total += Decimal(tokens_in) * model.input_cost_per_million / Decimal(1_000_000)
        if model.output_cost_per_million:
            total += Decimal(tokens_out) * model.output_cost_per_million / Decimal(1_000_000)
    return total.quantize(Decimal("0.00000001"))


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
