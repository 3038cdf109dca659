"""Per-provider rate limits (rpm, tpm) and concurrency leases (max_concurrency).

    lease = await limiter.acquire(provider)    # a Lease, or Denied(reason, retry_after) -> 429 with Retry-After
    ...                                        # the upstream call, or the whole stream
    await lease.release()                      # idempotent; also ends the slot when the holder is dropped

Rates: one fixed window per calendar minute (epoch seconds // 60), the same in both stores. `rpm` counts the calls
admitted in the current minute; `tpm` counts the tokens of calls that finished in the current minute
(`add_tokens`), and a call is refused once they reached the limit (a call in progress is never cut off). A
refusal's Retry-After is the rest of the minute. Checked in this order: tpm, concurrency, rpm; a refused call
consumes nothing. (A fixed window costs one counter per provider and minute, and its Retry-After is exact; it
admits up to twice the rpm across a minute boundary, which upstreams' own limits absorb as 429s we fail over on.)

Concurrency: a slot is a lease held from `acquire` until `release` (the gateway releases when the response, or
the whole stream, ended, failed or the client went away). A lease whose holder is gone without releasing ends
by itself: when the Lease object is garbage-collected (in process at once, through Redis from its event loop),
and, in Redis, when its process died, by expiry: each lease is a member ("<pid>:<limiter>:<n>") of a sorted set
per provider scored by its expiry time (Redis' clock), GATEWAY_LEASE_SECONDS after it was taken or last renewed.
A background heartbeat per process and event loop renews the leases it holds every GATEWAY_LEASE_SECONDS / 3, so
a long stream keeps its slot, and the slots of a killed worker come back within GATEWAY_LEASE_SECONDS.
Acquisition is one Lua script (drop expired leases, count, check the windows, add the lease, count the request):
atomic, one round trip; release is one ZREM. In process, a count per provider (a dead process takes it along).

Stores: Redis when RATE_LIMIT_REDIS_URL is set, so the limits hold across worker processes; in process otherwise.
If Redis cannot be reached, the limiter counts in process (the gateway keeps working; limits then hold per
process) and retries Redis after REDIS_RETRY_SECONDS. A lease is released in the store that granted it.
Only providers with rpm, tpm or max_concurrency set cost anything here. The usage ledger's budget counters use the
same Redis connections and fallback (`shared_redis`).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass

from django.conf import settings

log = logging.getLogger("eneo.gateway.limits")

REDIS_RETRY_SECONDS = 30
WINDOW_KEY_SECONDS = 120  # a minute's counters outlive it (clock differences between hosts)
_LEASES = "eneo:leases:"  # + provider id: sorted set, lease id -> expiry (ms, Redis clock)
_RPM = "eneo:rpm:"  # + "{provider id}:{minute}": calls admitted in that minute
_TPM = "eneo:tpm:"  # + "{provider id}:{minute}": tokens of calls finished in that minute

# What a store answers to an acquisition (the same codes from the Lua script and from _Local).
OK, TPM_REACHED, CONCURRENCY_REACHED, RPM_REACHED = 0, 1, 2, 3

# KEYS: leases, rpm counter, tpm counter. ARGV: max_concurrency, rpm, tpm (0 = no limit), lease id, lease ms.
_ACQUIRE = """
redis.replicate_commands()
local max_conc, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= tpm then return 1 end
local now = 0
if max_conc > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= max_conc then return 2 end
end
if rpm > 0 then
  if tonumber(redis.call('GET', KEYS[2]) or '0') >= rpm then return 3 end
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], %d)
end
if max_conc > 0 then
  local ms = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[1], now + ms, ARGV[4])
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
end
return 0
""" % WINDOW_KEY_SECONDS

# KEYS: leases. ARGV: lease ms, lease ids. Moves the expiry of the leases still there (XX: a released or expired
# lease is not brought back); returns how many were renewed.
_RENEW = """
redis.replicate_commands()
local t = redis.call('TIME')
local ms = tonumber(ARGV[1])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ms
local renewed = 0
for i = 2, #ARGV do renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i]) end
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return renewed
"""


@dataclass(frozen=True)
class Denied:
    reason: str
    retry_after: int


def _minute(now: float) -> int:
    return int(now // 60)


def _rest_of_minute(now: float) -> int:
    return max(1, 60 - int(now % 60))


def _denied(code: int, provider, now: float) -> Denied:
    if code == TPM_REACHED:
        return Denied(f"the provider's token limit ({provider.tpm} tokens per minute) is reached", _rest_of_minute(now))
    if code == CONCURRENCY_REACHED:
        return Denied(f"the provider's concurrency limit ({provider.max_concurrency} calls in flight) is reached", 1)
    return Denied(f"the provider's rate limit ({provider.rpm} requests per minute) is reached", _rest_of_minute(now))


def lease_seconds() -> float:
    return max(0.5, float(settings.GATEWAY_LEASE_SECONDS))


class Lease:
    """A held concurrency slot. `release()` ends it; calling it again does nothing. This base class holds nothing
    (a provider without max_concurrency)."""

    __slots__ = ("__weakref__",)

    @property
    def held(self) -> bool:
        return False

    async def release(self) -> None:
        return None


NO_LEASE = Lease()


class _LocalLease(Lease):
    __slots__ = ("_end",)

    def __init__(self, store: "_Local", pid: int):
        # Ends the slot when released, or when this object is collected without a release (its holder is gone).
        self._end = weakref.finalize(self, store.dropped.append, pid)

    @property
    def held(self) -> bool:
        return self._end.alive

    async def release(self) -> None:
        self._end()  # runs once: the slot goes back to the store


class _Local:
    """In-process store: per provider, the minute's request and token counts and the slots in use."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[int, tuple[int, int]] = {}  # provider -> (minute, calls admitted in it)
        self.tokens: dict[int, tuple[int, int]] = {}  # provider -> (minute, tokens of calls finished in it)
        self.inflight: dict[int, int] = {}  # provider -> slots in use
        self.dropped: deque[int] = deque()  # slots ended (released or collected), not yet subtracted

    def _settle(self):
        while self.dropped:
            pid = self.dropped.popleft()
            self.inflight[pid] = max(0, self.inflight.get(pid, 0) - 1)

    def acquire(self, pid: int, max_conc: int, rpm: int, tpm: int, minute: int) -> int:
        with self.lock:
            if tpm and _count(self.tokens, pid, minute) >= tpm:
                return TPM_REACHED
            if max_conc:
                self._settle()
                if self.inflight.get(pid, 0) >= max_conc:
                    return CONCURRENCY_REACHED
            if rpm:
                used = _count(self.requests, pid, minute)
                if used >= rpm:
                    return RPM_REACHED
                self.requests[pid] = (minute, used + 1)
            if max_conc:
                self.inflight[pid] = self.inflight.get(pid, 0) + 1
            return OK

    def in_use(self, pid: int) -> int:
        with self.lock:
            self._settle()
            return self.inflight.get(pid, 0)

    def tokens_used(self, pid: int, now: float | None = None) -> int:
        return _count(self.tokens, pid, _minute(time.time() if now is None else now))

    def add_tokens(self, pid: int, count: int, now: float):
        minute = _minute(now)
        with self.lock:
            self.tokens[pid] = (minute, _count(self.tokens, pid, minute) + count)


def _count(windows: dict[int, tuple[int, int]], pid: int, minute: int) -> int:
    window_minute, count = windows.get(pid, (0, 0))
    return count if window_minute == minute else 0


class _LoopState:
    """Redis plumbing of one event loop (a redis.asyncio client belongs to the loop it runs on): the client, the
    scripts, the leases taken on this loop (weakly: a lease dropped without release is no longer renewed) and
    their heartbeat task."""

    __slots__ = ("loop", "client", "acquire", "renew", "leases", "heartbeat")

    def __init__(self, loop, client):
        self.loop, self.client = loop, client
        self.acquire = client.register_script(_ACQUIRE)
        self.renew = client.register_script(_RENEW)
        self.leases: weakref.WeakSet[_RedisLease] = weakref.WeakSet()
        self.heartbeat: asyncio.Task | None = None


class _RedisLease(Lease):
    __slots__ = ("state", "key", "member", "_end")

    def __init__(self, state: _LoopState, key: str, member: str):
        self.state, self.key, self.member = state, key, member
        self._end = weakref.finalize(self, _release_later, state.loop, state.client, key, member)
        self._end.atexit = False

    @property
    def held(self) -> bool:
        return self._end.alive

    async def release(self) -> None:
        found = self._end.detach()  # from now on, collecting this object does nothing
        if found is None:
            return
        self.state.leases.discard(self)  # no longer renewed
        _, client, key, member = found[2]
        try:
            await client.zrem(key, member)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            log.warning("rate limiter: could not release a concurrency lease (%s); it expires within %g s",
                        type(exc).__name__, lease_seconds())


_background: set[asyncio.Task] = set()


def _release_later(loop, client, key: str, member: str):
    """A Redis lease collected without release (its holder is gone): release it on its loop, from whatever thread
    the garbage collector runs in. If that is not possible, the lease expires by itself."""
    def spawn():
        task = loop.create_task(client.zrem(key, member))
        _background.add(task)
        task.add_done_callback(_forget)

    try:
        if not loop.is_closed():
            loop.call_soon_threadsafe(spawn)
    except RuntimeError:  # the loop closed meanwhile
        pass


def _forget(task: asyncio.Task):
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.info("rate limiter: a dropped lease was not released (%s); it expires by itself",
                 type(task.exception()).__name__)


class Limiter:
    """One per process (the Gateway's). `redis_url` overrides RATE_LIMIT_REDIS_URL (tests, tools)."""

    def __init__(self, redis_url: str | None = None):
        self.local = _Local()
        self._fixed_url = redis_url
        self._url = None
        self._loops: dict = {}  # event loop -> _LoopState
        self._down_until = 0.0
        self._ids = itertools.count()
        self._token = uuid.uuid4().hex[:8]

    # --- the gateway's calls ------------------------------------------------------------------------------
    async def acquire(self, provider) -> Lease | Denied:
        """A concurrency lease for one call to the provider (NO_LEASE if it has no max_concurrency), or Denied."""
        rpm, max_conc, tpm = provider.rpm or 0, provider.max_concurrency or 0, provider.tpm or 0
        if not rpm and not max_conc and not tpm:
            return NO_LEASE
        now = time.time()
        state = self._state()
        if state is not None:
            try:
                return await self._acquire_redis(state, provider, max_conc, rpm, tpm, now)
            except Exception as exc:  # noqa: BLE001 - any Redis failure degrades to counting in process
                self._redis_failed(exc)
        code = self.local.acquire(provider.pk, max_conc, rpm, tpm, _minute(now))
        if code != OK:
            return _denied(code, provider, now)
        return _LocalLease(self.local, provider.pk) if max_conc else NO_LEASE

    async def add_tokens(self, provider, count: int):
        """Count a finished call's tokens against the provider's tokens-per-minute limit (if it has one)."""
        if not provider.tpm or not count:
            return
        now = time.time()
        state = self._state()
        if state is not None:
            try:
                pipe = state.client.pipeline(transaction=False)
                key = f"{_TPM}{provider.pk}:{_minute(now)}"
                pipe.incrby(key, count)
                pipe.expire(key, WINDOW_KEY_SECONDS)
                await pipe.execute()
                return
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)
        self.local.add_tokens(provider.pk, count, now)

    # --- inspection (tests, tools) ------------------------------------------------------------------------
    async def in_use(self, provider) -> int:
        """Slots of the provider held now (in the store new calls would use)."""
        state = self._state()
        if state is None:
            return self.local.in_use(provider.pk)
        key = _LEASES + str(provider.pk)
        seconds, micros = await state.client.time()
        pipe = state.client.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", seconds * 1000 + micros // 1000)
        pipe.zcard(key)
        return (await pipe.execute())[1]

    # --- Redis, shared with the usage ledger ---------------------------------------------------------------
    def shared_redis(self):
        """This event loop's client of the Redis that worker processes share (RATE_LIMIT_REDIS_URL), or None when
        none is configured or it failed within REDIS_RETRY_SECONDS. The usage ledger keeps tenants' month spend
        there (budgets), on the same connections and with the same fallback as the limits."""
        state = self._state()
        return state.client if state is not None else None

    def shared_redis_failed(self, exc: Exception):
        """A failure of the shared Redis seen by another user of it: the same fallback as the limiter's own."""
        self._redis_failed(exc)

    # --- Redis --------------------------------------------------------------------------------------------
    async def _acquire_redis(self, state: _LoopState, provider, max_conc, rpm, tpm, now) -> Lease | Denied:
        pid, minute = provider.pk, _minute(now)
        key = _LEASES + str(pid)
        member = f"{os.getpid()}:{self._token}:{next(self._ids)}" if max_conc else ""
        ms = int(lease_seconds() * 1000)
        code = await state.acquire(keys=[key, f"{_RPM}{pid}:{minute}", f"{_TPM}{pid}:{minute}"],
                                   args=[max_conc, rpm, tpm, member, ms])
        if code != OK:
            return _denied(int(code), provider, now)
        if not max_conc:
            return NO_LEASE
        lease = _RedisLease(state, key, member)
        state.leases.add(lease)
        if state.heartbeat is None:
            state.heartbeat = state.loop.create_task(self._heartbeat(state))
        return lease

    async def _heartbeat(self, state: _LoopState):
        """Renew this loop's live leases every lease_seconds() / 3, while there are any."""
        try:
            while state.leases:
                await asyncio.sleep(lease_seconds() / 3)
                await self._renew(state)  # (holds no lease across the sleep: a dropped one must be collectable)
        finally:
            state.heartbeat = None

    @staticmethod
    async def _renew(state: _LoopState):
        leases = [lease for lease in state.leases if lease.held]
        if not leases:
            return
        by_key: dict[str, list[str]] = {}
        for lease in leases:
            by_key.setdefault(lease.key, []).append(lease.member)
        try:
            pipe = state.client.pipeline(transaction=False)
            for key, members in by_key.items():
                await state.renew(keys=[key], args=[int(lease_seconds() * 1000), *members], client=pipe)
            renewed = sum(await pipe.execute())
        except Exception as exc:  # noqa: BLE001 - the leases expire unless a later beat gets through
            log.warning("rate limiter: could not renew concurrency leases (%s)", type(exc).__name__)
            return
        lost = sum(1 for lease in leases if lease.held) - renewed  # (released meanwhile: not lost)
        if lost > 0:
            log.warning("rate limiter: %d concurrency lease(s) had expired before renewal (event loop blocked for "
                        "more than GATEWAY_LEASE_SECONDS?)", lost)

    def _state(self) -> _LoopState | None:
        url = self._fixed_url if self._fixed_url is not None else settings.RATE_LIMIT_REDIS_URL
        if url != self._url:  # configuration changed: start over
            self._url, self._loops, self._down_until = url, {}, 0.0
        if not url or (self._down_until and time.monotonic() < self._down_until):
            return None
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            import redis.asyncio as aioredis

            for old in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[old]
            client = aioredis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
            state = self._loops[loop] = _LoopState(loop, client)
        return state

    def _redis_failed(self, exc):
        log.warning("rate limiter: Redis unavailable (%s); counting limits and budgets in process for %s s",
                    type(exc).__name__, REDIS_RETRY_SECONDS)
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS
        self._loops = {}
