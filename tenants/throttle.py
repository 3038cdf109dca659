"""Failed-authentication throttle per client address (API key guessing on /v1, REST and the sysadmin API).

After AUTH_FAILURE_LIMIT failed authentications from one address within AUTH_FAILURE_WINDOW_SECONDS (a sliding
window), the address is locked out for AUTH_FAILURE_WINDOW_SECONDS: every request from it is answered 429 with
Retry-After, before any key is looked at, so a valid key does not get in either (it might be the one that was
just guessed). A success does not reset anything. Only requests that present a key count; a request without one
is not a guess. IPv6 addresses count per /64 network (one subscriber's allocation).

Counts are shared by all worker processes through Redis when RATE_LIMIT_REDIS_URL is set (a sorted set of
failure times and a lock key per address); otherwise, or for 30 s after Redis failed, they are kept in process.
The /v1 gateway uses the async methods (redis.asyncio, short timeouts: the event loop never waits long); the
REST API (ninja auth classes and AuthFailureThrottleMiddleware) uses the sync ones.

The client address is REMOTE_ADDR, which under ASGI is the connection's peer as the server reports it (the
`client` of the ASGI scope). uvicorn rewrites that from X-Forwarded-For for connections from
--forwarded-allow-ips (127.0.0.1 by default): run it with --no-proxy-headers unless a proxy is in front.
With BEHIND_TLS_PROXY=true, the last X-Forwarded-For entry (the one our proxy appended) is used instead.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque

from django.conf import settings
from django.http import JsonResponse

log = logging.getLogger("eneo.auth")

REDIS_RETRY_SECONDS = 30
# With Redis, a "not locked out" answer is reused for this long per address, so a request costs no Redis round trip
# (the gateway's budget is a few CPU ms per call). A failure seen by this process drops it at once; a lockout
# reached through another worker applies here within this time.
CLEAR_CACHE_SECONDS = 1.0
LOCAL_MAX_ADDRESSES = 100_000  # in-process state is bounded: the oldest addresses are forgotten first
_FAILS = "eneo:authfail:"
_LOCK = "eneo:authlock:"


def client_address(request) -> str | None:
    """The address a request came from: REMOTE_ADDR; with BEHIND_TLS_PROXY, the last X-Forwarded-For entry.
    Also django-axes' AXES_CLIENT_IP_CALLABLE, so the admin login lockout counts the same address."""
    return _address(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR", ""))


def scope_address(scope) -> str | None:
    """client_address of an ASGI request, before Django has made a request of it."""
    client = scope.get("client")
    forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-for", b"").decode("latin-1")
    return _address(client[0] if client else None, forwarded)


def _address(remote: str | None, forwarded: str) -> str | None:
    if settings.BEHIND_TLS_PROXY:
        forwarded = forwarded.split(",")[-1].strip()
        if forwarded and _valid_ip(forwarded):
            return forwarded
    return remote or None


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def throttle_key(address: str | None) -> str:
    """What is counted: the address itself; for IPv6 its /64 network."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def throttled_message(retry_after: int) -> str:
    return f"Too many failed authentication attempts from your address. Try again in {retry_after} seconds."


def _limits() -> tuple[int, int]:
    return settings.AUTH_FAILURE_LIMIT, max(1, int(settings.AUTH_FAILURE_WINDOW_SECONDS))


class _Local:
    """In-process counting (no Redis, or Redis down)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.failures: OrderedDict[str, deque] = OrderedDict()
        self.locked_until: OrderedDict[str, float] = OrderedDict()

    def retry_after(self, key: str) -> int:
        with self.lock:
            until = self.locked_until.get(key)
            if until is None:
                return 0
            left = until - time.monotonic()
            if left <= 0:
                del self.locked_until[key]
                return 0
            return math.ceil(left)

    def record_failure(self, key: str, limit: int, window: int) -> int:
        now = time.monotonic()
        with self.lock:
            times = self.failures.pop(key, None) or deque()
            while times and now - times[0] >= window:
                times.popleft()
            times.append(now)
            if len(times) >= limit:
                self.locked_until.pop(key, None)
                self.locked_until[key] = now + window
                _trim(self.locked_until)
                return window
            self.failures[key] = times  # re-inserted: most recent last
            _trim(self.failures)
            return 0

    def clear(self):
        with self.lock:
            self.failures.clear()
            self.locked_until.clear()


def _trim(entries: OrderedDict):
    while len(entries) > LOCAL_MAX_ADDRESSES:
        entries.popitem(last=False)


class AuthThrottle:
    """One per process (`auth_throttle`); `redis_url` overrides RATE_LIMIT_REDIS_URL (tests, tools)."""

    def __init__(self, redis_url: str | None = None):
        self.local = _Local()
        self._fixed_url = redis_url
        self._url = None
        self._sync = None
        self._async: dict = {}  # event loop -> redis.asyncio client (a client belongs to the loop it runs on)
        self._down_until = 0.0
        self._clear_until: OrderedDict[str, float] = OrderedDict()  # address -> known not locked out until

    def _known_clear(self, key: str) -> bool:
        until = self._clear_until.get(key)
        return until is not None and time.monotonic() < until

    def _remember(self, key: str, seconds: int) -> int:
        if seconds:
            self._clear_until.pop(key, None)
        else:
            self._clear_until[key] = time.monotonic() + CLEAR_CACHE_SECONDS
            _trim(self._clear_until)
        return seconds

    # --- sync: REST API ------------------------------------------------------------------------------------
    def retry_after(self, address: str | None) -> int:
        """Seconds the address is still locked out (0 = not locked out)."""
        limit, _ = _limits()
        if limit <= 0:
            return 0
        key = throttle_key(address)
        client = self._sync_client()
        if client is not None and not self._known_clear(key):
            try:
                return self._remember(key, _ttl_seconds(client.pttl(_LOCK + key)))
            except Exception as exc:  # noqa: BLE001 - any Redis failure: count in process
                self._redis_failed(exc)
        return self.local.retry_after(key)

    def record_failure(self, address: str | None) -> int:
        """Count one failed authentication; returns the lockout in seconds if this failure started one."""
        limit, window = _limits()
        if limit <= 0:
            return 0
        key = throttle_key(address)
        self._clear_until.pop(key, None)
        client = self._sync_client()
        if client is not None:
            try:
                pipe = client.pipeline()
                for command, args in _failure_commands(key, window):
                    getattr(pipe, command)(*args)
                count = pipe.execute()[2]
                if count >= limit:
                    pipe = client.pipeline()
                    pipe.set(_LOCK + key, "1", ex=window)
                    pipe.delete(_FAILS + key)
                    pipe.execute()
                    return self._locked(address, window)
                return 0
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)
        return self._locked(address, self.local.record_failure(key, limit, window))

    # --- async: the /v1 gateway ----------------------------------------------------------------------------
    async def aretry_after(self, address: str | None) -> int:
        limit, _ = _limits()
        if limit <= 0:
            return 0
        key = throttle_key(address)
        client = self._async_client()
        if client is not None and not self._known_clear(key):
            try:
                return self._remember(key, _ttl_seconds(await client.pttl(_LOCK + key)))
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)
        return self.local.retry_after(key)

    async def arecord_failure(self, address: str | None) -> int:
        limit, window = _limits()
        if limit <= 0:
            return 0
        key = throttle_key(address)
        self._clear_until.pop(key, None)
        client = self._async_client()
        if client is not None:
            try:
                pipe = client.pipeline()
                for command, args in _failure_commands(key, window):
                    getattr(pipe, command)(*args)
                count = (await pipe.execute())[2]
                if count >= limit:
                    pipe = client.pipeline()
                    pipe.set(_LOCK + key, "1", ex=window)
                    pipe.delete(_FAILS + key)
                    await pipe.execute()
                    return self._locked(address, window)
                return 0
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)
        return self._locked(address, self.local.record_failure(key, limit, window))

    def clear(self):
        """Forget every count and lockout (in process, and in Redis when configured)."""
        self.local.clear()
        self._clear_until.clear()
        client = self._sync_client()
        if client is not None:
            try:
                for pattern in (_FAILS + "*", _LOCK + "*"):
                    keys = list(client.scan_iter(pattern, count=1000))
                    if keys:
                        client.delete(*keys)
            except Exception as exc:  # noqa: BLE001
                self._redis_failed(exc)

    # --- plumbing ------------------------------------------------------------------------------------------
    @staticmethod
    def _locked(address: str | None, seconds: int) -> int:
        if seconds:
            log.warning("authentication: %s locked out for %s s after repeated failures", address, seconds)
        return seconds

    def _current_url(self) -> str:
        url = self._fixed_url if self._fixed_url is not None else settings.RATE_LIMIT_REDIS_URL
        if url != self._url:  # configuration changed: start over
            self._url, self._sync, self._async, self._down_until = url, None, {}, 0.0
        if not url or time.monotonic() < self._down_until:
            return ""
        return url

    def _sync_client(self):
        url = self._current_url()
        if not url:
            return None
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return self._sync

    def _async_client(self):
        url = self._current_url()
        if not url:
            return None
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            import redis.asyncio as aioredis

            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]
            client = self._async[loop] = aioredis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return client

    def _redis_failed(self, exc):
        log.warning("authentication throttle: Redis unavailable (%s); counting in process for %s s",
                    type(exc).__name__, REDIS_RETRY_SECONDS)
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS
        self._sync, self._async = None, {}


def _failure_commands(key: str, window: int):
    """Sliding window: drop failures older than the window, add this one, count, keep the key for a window."""
    now = time.time()
    return [
        ("zremrangebyscore", (_FAILS + key, "-inf", now - window)),
        ("zadd", (_FAILS + key, {f"{now:.6f}:{uuid.uuid4().hex[:8]}": now})),
        ("zcard", (_FAILS + key,)),
        ("expire", (_FAILS + key, window)),
    ]


def _ttl_seconds(pttl: int) -> int:
    if pttl is None or pttl == -2:  # no lock
        return 0
    if pttl < 0:  # a lock without expiry (not written by us): treat it as a full window
        return _limits()[1]
    return max(1, math.ceil(pttl / 1000))


auth_throttle = AuthThrottle()


def record_auth_failure(request) -> None:
    """Count a request's failed authentication, once per request (it may pass through several auth classes)."""
    if getattr(request, "_auth_failure_counted", False):
        return
    request._auth_failure_counted = True
    auth_throttle.record_failure(client_address(request))


class AuthFailureThrottleMiddleware:
    """REST API (/api/): a request from a locked-out address is answered 429 {"detail"} with Retry-After before
    any view or key check runs. (The /v1 gateway does the same in providers.gateway.api.authenticate.)"""

    prefix = "/api/"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info.startswith(self.prefix):
            retry_after = auth_throttle.retry_after(client_address(request))
            if retry_after:
                return JsonResponse({"detail": throttled_message(retry_after)}, status=429,
                                    headers={"Retry-After": str(retry_after)})
        return self.get_response(request)
