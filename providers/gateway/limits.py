"""Per-provider rate limits (rpm, tpm) and concurrency gates (max_concurrency).

tpm counts the tokens of finished calls in the current minute; a call is refused once the minute's tokens
reached the limit (a call in progress is never cut off).

Redis-backed when RATE_LIMIT_REDIS_URL is set, so the limits hold across worker processes; in-process
otherwise. If Redis cannot be reached, the limiter falls back to in-process counting (the gateway keeps
working; limits then hold per process) and retries Redis after a pause.
Only providers with rpm, tpm or max_concurrency set cost anything here.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from django.conf import settings

log = logging.getLogger("eneo.gateway.limits")


@dataclass(frozen=True)
class Denied:
    reason: str
    retry_after: int


def _minute() -> int:
    return int(time.time() // 60)


def _rest_of_minute() -> int:
    return max(1, 60 - int(time.time() % 60))


def _tpm_denied(tpm: int) -> Denied:
    return Denied(f"the provider's token limit ({tpm} tokens per minute) is reached", _rest_of_minute())


def _concurrency_denied(max_conc: int) -> Denied:
    return Denied(f"the provider's concurrency limit ({max_conc} calls in flight) is reached", 1)


def _rpm_denied(rpm: int, retry_after: int) -> Denied:
    return Denied(f"the provider's rate limit ({rpm} requests per minute) is reached", retry_after)


async def _incr(client, key: str, ttl: int, by: int = 1) -> int:
    """Add to a Redis counter and (re)set its expiry, in one round trip; returns the new value."""
    pipe = client.pipeline()
    pipe.incrby(key, by)
    pipe.expire(key, ttl)
    value, _ = await pipe.execute()
    return value


class _Local:
    def __init__(self):
        self.windows: dict[int, deque] = {}
        self.inflight: dict[int, int] = {}
        self.tokens: dict[int, tuple[int, int]] = {}  # provider -> (minute, tokens used in it)

    def tokens_used(self, pid: int) -> int:
        minute, used = self.tokens.get(pid, (0, 0))
        return used if minute == _minute() else 0

    def add_tokens(self, pid: int, count: int):
        self.tokens[pid] = (_minute(), self.tokens_used(pid) + count)

    def acquire(self, pid: int, rpm: int | None, max_conc: int | None, tpm: int | None = None) -> Denied | None:
        now = time.monotonic()
        if tpm and self.tokens_used(pid) >= tpm:
            return _tpm_denied(tpm)
        if max_conc and self.inflight.get(pid, 0) >= max_conc:
            return _concurrency_denied(max_conc)
        if rpm:
            window = self.windows.setdefault(pid, deque())
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= rpm:
                return _rpm_denied(rpm, max(1, int(60 - (now - window[0])) + 1))
            window.append(now)
        if max_conc:
            self.inflight[pid] = self.inflight.get(pid, 0) + 1
        return None

    def release(self, pid: int, max_conc: int | None):
        if max_conc:
            self.inflight[pid] = max(0, self.inflight.get(pid, 0) - 1)


class Limiter:
    def __init__(self):
        self.local = _Local()
        self._redis = None
        self._redis_down_until = 0.0
        self._url = None

    def _client(self):
        url = settings.RATE_LIMIT_REDIS_URL
        if url != self._url:  # configuration changed: start over
            self._url, self._redis, self._redis_down_until = url, None, 0.0
        if not url or time.monotonic() < self._redis_down_until:
            return None
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return self._redis

    def _redis_failed(self, exc):
        log.warning("rate limiter: Redis unavailable (%s); counting in-process for 30 s", type(exc).__name__)
        self._redis_down_until = time.monotonic() + 30
        self._redis = None

    async def acquire(self, provider) -> Denied | None:
        rpm, max_conc, tpm = provider.rpm, provider.max_concurrency, provider.tpm
        if not rpm and not max_conc and not tpm:
            return None
        client = self._client()
        if client is None:
            return self.local.acquire(provider.pk, rpm, max_conc, tpm)
        try:
            return await self._acquire_redis(client, provider.pk, rpm, max_conc, tpm)
        except Exception as exc:  # noqa: BLE001 - any Redis failure degrades to local counting
            self._redis_failed(exc)
            return self.local.acquire(provider.pk, rpm, max_conc, tpm)

    async def add_tokens(self, provider, count: int):
        """Count a finished call's tokens against the provider's tokens-per-minute limit (if it has one)."""
        if not provider.tpm or not count:
            return
        client = self._client()
        if client is not None:
            try:
                await _incr(client, f"eneo:tpm:{provider.pk}:{_minute()}", 61, count)
                return
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)
        self.local.add_tokens(provider.pk, count)

    async def _acquire_redis(self, client, pid, rpm, max_conc, tpm=None) -> Denied | None:
        if tpm:
            used = await client.get(f"eneo:tpm:{pid}:{_minute()}")
            if used is not None and int(used) >= tpm:
                return _tpm_denied(tpm)
        if max_conc and await _incr(client, f"eneo:cc:{pid}", 600) > max_conc:
            await client.decr(f"eneo:cc:{pid}")
            return _concurrency_denied(max_conc)
        if rpm and await _incr(client, f"eneo:rpm:{pid}:{_minute()}", 61) > rpm:
            if max_conc:
                await client.decr(f"eneo:cc:{pid}")
            return _rpm_denied(rpm, _rest_of_minute())
        return None

    async def release(self, provider):
        max_conc = provider.max_concurrency
        if not max_conc:
            return
        client = self._client()
        if client is None:
            self.local.release(provider.pk, max_conc)
            return
        try:
            await client.decr(f"eneo:cc:{provider.pk}")
        except Exception as exc:  # noqa: BLE001
            self._redis_failed(exc)
            self.local.release(provider.pk, max_conc)


