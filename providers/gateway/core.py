"""The Gateway: everything one process's /v1 lane keeps between calls, in one object.

    catalog  API keys, tenants, routable models, provider keys, credentials (rows, ciphertext)  catalog.py
    limiter  providers' rpm / tpm / concurrency limits (in process, or shared through Redis)     limits.py
    breaker  per-provider (and per tenant credential) circuit breaker                            breaker.py
    usage    the usage ledger's writer (batched inserts)                                          usage.py

The ASGI app builds one (`eneo_site.asgi.build_application`) and hands it to every /v1 request as
`request.gateway`; tests build their own. `process_gateway()` is the one a process serves with when nothing
else was given (the ASGI app's, and /v1 requests that reach Django's own handler, e.g. from Django's test client).
"""
from __future__ import annotations

import threading

from providers.gateway.breaker import Breaker
from providers.gateway.catalog import Catalog
from providers.gateway.limits import Limiter
from providers.gateway.usage import UsageWriter


class Gateway:
    def __init__(self):
        self.catalog = Catalog()
        self.limiter = Limiter()
        self.breaker = Breaker()
        self.usage = UsageWriter()


_process_gateway: Gateway | None = None
_lock = threading.Lock()


def process_gateway() -> Gateway:
    global _process_gateway
    with _lock:
        if _process_gateway is None:
            _process_gateway = Gateway()
        return _process_gateway


def request_gateway(request) -> Gateway:
    """The Gateway serving this request."""
    return getattr(request, "gateway", None) or process_gateway()
