"""Revocations reach every gateway worker (DESIGN.md "Gateway state"): on the real topology (two uvicorn workers,
each with its own catalog; CATALOG_REFRESH_SECONDS = topology.CATALOG_REFRESH_SECONDS), a revoked key and a deleted
tenant are refused by every worker within 2 s, and a key is accepted by every worker as soon as it exists.

Each request opens a connection of its own and they are sent many at a time, so both workers answer.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tenants.scopes import Scope

DEADLINE = 2.0  # seconds
BURST = 20


def statuses(system, key: str, n: int = BURST) -> list[int]:
    def one(_):
        return httpx.get(system.url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                         timeout=10).status_code  # a new connection each time

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_revoked_key_and_deleted_tenant_refused_by_every_worker(system):
    from tenants.actors import SYSTEM
    from tenants.api_keys import api_key_revoke
    from tenants.services import tenant_delete

    revoked_tenant, deleted_tenant, bystander = system.tenant(), system.tenant(), system.tenant()
    revoked = system.api_key(revoked_tenant, Scope.GATEWAY)
    kept = system.api_key(revoked_tenant, Scope.GATEWAY)
    deleted = system.api_key(deleted_tenant, Scope.GATEWAY)
    other = system.api_key(bystander, Scope.GATEWAY)
    for key in (revoked, kept, deleted, other):  # accepted at once, by every worker
        assert statuses(system, key) == [200] * BURST

    api_key_revoke(actor=SYSTEM, api_key=revoked_tenant.api_keys.get(prefix=revoked.split("_")[1]))
    tenant_delete(actor=SYSTEM, tenant=deleted_tenant)
    changed = time.monotonic()
    time.sleep(max(0.0, changed + DEADLINE - time.monotonic()))
    assert statuses(system, revoked) == [401] * BURST
    assert statuses(system, deleted) == [401] * BURST
    assert statuses(system, kept) == [200] * BURST  # the tenant's other key, and other tenants, go on
    assert statuses(system, other) == [200] * BURST


def test_refusal_is_prompt_on_every_worker(system):
    """Not only by the deadline: refused by all workers within CATALOG_REFRESH_SECONDS (0.2 s here) plus the
    time of one request, measured by requests sent from the moment of the change."""
    from tenants.actors import SYSTEM
    from tenants.services import tenant_delete

    from .topology import CATALOG_REFRESH_SECONDS

    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    assert statuses(system, key) == [200] * BURST
    tenant_delete(actor=SYSTEM, tenant=tenant)
    changed = time.monotonic()
    while True:
        sent = time.monotonic()
        result = statuses(system, key, 8)
        if sent - changed >= CATALOG_REFRESH_SECONDS:
            assert result == [401] * 8, f"accepted {sent - changed:.2f} s after the tenant was deleted: {result}"
            break
        time.sleep(0.02)
    assert statuses(system, key) == [401] * BURST
