"""A per-provider circuit breaker for the gateway (per process).

After GATEWAY_BREAKER_FAILURES consecutive provider faults (`provider_fault`: 5xx answers, timeouts, connection
errors) a provider is skipped for GATEWAY_BREAKER_SECONDS: callers of an alias go straight to its other models,
and a model with no alternative fails fast (503) instead of piling up timeouts. After the pause one call is let
through (half open); its success closes the circuit, its failure opens it again.

What a caller causes never counts: a rejected request (4xx), a rejected credential, bad input that fails before
reaching the provider. And the circuit is per key in use (the gateway passes (provider, tenant) for a tenant's
own credential, (provider, None) for shared keys), so one tenant's broken credential pauses nobody else.

Its state is a metric (providers.metrics.breaker_changed): eneo_gateway_breaker_open is 1 from the moment a
circuit opens until a call through it succeeds again (its half-open pause included).
"""
from __future__ import annotations

import time

from django.conf import settings

from providers.metrics import breaker_changed

_LOCAL_ERRORS = (UnicodeError, TypeError, ValueError, KeyError, AttributeError)


def provider_fault(exc: BaseException) -> bool:
    """Whether an exception from a provider call is the provider's fault (and so counts for the breaker)."""
    import httpx

    from credentials.egress import egress_denied

    from providers.llm import litellm

    if egress_denied(exc) is not None:
        return False
    if isinstance(exc, litellm.Timeout):
        return True
    if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError, litellm.BadRequestError,
                        litellm.NotFoundError, litellm.RateLimitError, litellm.UnprocessableEntityError)):
        return False
    cause, network = exc, False
    for _ in range(10):
        cause = cause.__cause__ or cause.__context__
        if cause is None:
            break
        if isinstance(cause, _LOCAL_ERRORS) and not isinstance(cause, httpx.HTTPError):
            return False  # raised here, before or while building the request: not the provider
        network = network or isinstance(cause, (httpx.TransportError, ConnectionError, TimeoutError))
    if network or isinstance(exc, litellm.APIConnectionError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500


class Breaker:
    def __init__(self):
        self._failures: dict = {}
        self._open_until: dict = {}
        self._labels: dict = {}  # open circuit -> its metric labels (provider public id, tenant slug or "")

    def allows(self, provider_id) -> bool:
        until = self._open_until.get(provider_id)
        if until is None:
            return True
        if time.monotonic() >= until:  # half open: let this call try
            self._open_until[provider_id] = time.monotonic() + settings.GATEWAY_BREAKER_SECONDS
            return True
        return False

    def success(self, provider_id):
        self._failures.pop(provider_id, None)
        if self._open_until.pop(provider_id, None) is not None:
            self._closed(provider_id)

    def failure(self, provider_id, labels: tuple[str, str] | None = None):
        """A provider fault; `labels`: the circuit's (provider public id, tenant slug or "") for the metrics."""
        count = self._failures.get(provider_id, 0) + 1
        self._failures[provider_id] = count
        if settings.GATEWAY_BREAKER_FAILURES and count >= settings.GATEWAY_BREAKER_FAILURES:
            opens = provider_id not in self._open_until
            self._open_until[provider_id] = time.monotonic() + settings.GATEWAY_BREAKER_SECONDS
            if opens and labels is not None:
                self._labels[provider_id] = labels
                breaker_changed(*labels, True)

    def _closed(self, provider_id):
        labels = self._labels.pop(provider_id, None)
        if labels is not None:
            breaker_changed(*labels, False)

    def reset(self):
        for provider_id in list(self._open_until):
            self._closed(provider_id)
        self._failures.clear()
        self._open_until.clear()


