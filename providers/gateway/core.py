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

import asyncio
import contextvars
import logging
import threading

from tenants.request_id import current_request_id

from providers.gateway.breaker import Breaker
from providers.gateway.catalog import Catalog
from providers.gateway.limits import Limiter
from providers.gateway.shapes import public_name
from providers.gateway.usage import UsageWriter
from providers.metrics import gateway_metrics

log = logging.getLogger("eneo.gateway")


def bearer_token(authorization: str, api_key: str = "", x_api_key: str = "") -> str:
    """The API key a /v1 request presents: `Authorization: Bearer <key>`, Azure's `api-key: <key>` or Anthropic's
    `x-api-key: <key>` (what each SDK sends)."""
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else api_key or x_api_key


def request_token(request) -> str:
    headers = request.headers
    return bearer_token(headers.get("Authorization", ""), headers.get("api-key", ""), headers.get("x-api-key", ""))


def endpoint_name(path: str) -> str:
    """The usage ledger's name of a /v1 endpoint: /v1/chat/completions -> chat.completions."""
    return path.removeprefix("/v1/").strip("/").replace("/", ".")[:30]


class Gateway:
    def __init__(self):
        self.catalog = Catalog()
        self.limiter = Limiter()
        self.breaker = Breaker()
        # budgets share the limiter's Redis; every record is counted in the metrics there too
        self.usage = UsageWriter(shared=self.limiter, metrics=gateway_metrics(self.metric_names))
        self._refusals: set[asyncio.Task] = set()

    def metric_names(self, tenant_id, model_id) -> tuple[str, str, str] | None:
        """(tenant slug, provider public id, model public name) of a usage record, from the catalog as it is; None
        when it does not know them. No model (a refusal before one was chosen): empty provider and model."""
        snapshot = self.catalog.current()
        tenant = snapshot.tenants.get(tenant_id) if snapshot is not None else None
        if tenant is None:
            return None
        if model_id is None:
            return tenant.slug, "", ""
        models = snapshot.per_tenant.get(tenant_id)
        model = next((m for m in models.models if m.pk == model_id), None) if models is not None else None
        if model is None:
            return None
        return tenant.slug, model.provider.public_id, public_name(model)

    def record_refusal(self, token: str, address: str | None, path: str, status: int, code: str,
                       requested: str = ""):
        """A call refused before its caller was authenticated (an invalid or oversized body): recorded in the usage
        ledger when `token` is a known tenant's key, like every other refusal. The key is looked up in the
        background, as `authenticate` would (a key created a moment ago is found); a wrong key counts as a failed
        authentication of `address`, and nothing is recorded for it."""
        task = asyncio.get_running_loop().create_task(
            self._record_refusal(token, address, path, status, code, requested, current_request_id.get()),
            context=contextvars.Context())
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def flush_usage(self):
        """Write every usage record due: refusals still being looked up first, then the writer's queue."""
        if self._refusals:
            await asyncio.gather(*self._refusals, return_exceptions=True)
        await self.usage.flush()

    async def _record_refusal(self, token, address, path, status, code, requested, request_id):
        from tenants.throttle import auth_throttle

        try:
            if not token or await auth_throttle.aretry_after(address):
                return
            snapshot, key = await self.catalog.authenticate(token)
            if key is None:
                await auth_throttle.arecord_failure(address)
            elif key.tenant_id in snapshot.tenants:
                self.usage.refused(key.tenant_id, key.pk, requested, endpoint_name(path), status, code, request_id)
        except Exception:  # noqa: BLE001 - the answer is sent; a lost record is logged, never raised
            log.warning("gateway: could not record a refused call", exc_info=True)


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
