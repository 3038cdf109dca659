"""A per-provider circuit breaker for the gateway (per process).

After GATEWAY_BREAKER_FAILURES consecutive upstream failures (5xx, timeouts, connection errors) a provider is
skipped for GATEWAY_BREAKER_SECONDS: callers of an alias go straight to its other models, and a model with no
alternative fails fast (503) instead of piling up timeouts. After the pause one call is let through (half
open); its success closes the circuit, its failure opens it again.
"""
from __future__ import annotations

import time

from django.conf import settings


class Breaker:
    def __init__(self):
        self._failures: dict[int, int] = {}
        self._open_until: dict[int, float] = {}

    def allows(self, provider_id: int) -> bool:
        until = self._open_until.get(provider_id)
        if until is None:
            return True
        if time.monotonic() >= until:  # half open: let this call try
            self._open_until[provider_id] = time.monotonic() + settings.GATEWAY_BREAKER_SECONDS
            return True
        return False

    def success(self, provider_id: int):
        self._failures.pop(provider_id, None)
        self._open_until.pop(provider_id, None)

    def failure(self, provider_id: int):
        count = self._failures.get(provider_id, 0) + 1
        self._failures[provider_id] = count
        if settings.GATEWAY_BREAKER_FAILURES and count >= settings.GATEWAY_BREAKER_FAILURES:
            self._open_until[provider_id] = time.monotonic() + settings.GATEWAY_BREAKER_SECONDS

    def reset(self):
        self._failures.clear()
        self._open_until.clear()


breaker = Breaker()
