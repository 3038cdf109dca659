"""Provider concurrency limits on the real topology (topology.py: uvicorn with two workers sharing the limits
through Redis): slots are leases held for a whole stream, and the slots of a worker killed with SIGKILL come back
by themselves within GATEWAY_LEASE_SECONDS (topology.LEASE_SECONDS), so the full max_concurrency is available
again."""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from providers import services
from tenants.actors import SYSTEM
from tenants.scopes import Scope

from .topology import LEASE_SECONDS

HI = [{"role": "user", "content": "hi"}]
SLOTS = 4


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _open_streams(url: str, key: str, count: int, opened: threading.Barrier) -> list:
    """`count` streams at once; each waits at `opened` once its first event came, then reads to the end. Returns
    futures of (status, last line or the error's name)."""
    def one():
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": "gpt-4o-mini", "stream": True, "messages": HI}, timeout=20) as r:
                lines = r.iter_lines()
                first = next(lines) if r.status_code == 200 else r.read().decode()
                opened.wait(10)
                last = first
                for line in lines:
                    last = line or last
                return r.status_code, last
        except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
            return None, type(exc).__name__

    pool = ThreadPoolExecutor(count)
    futures = [pool.submit(one) for _ in range(count)]
    pool.shutdown(wait=False)
    return futures


def _refused(url: str, key: str) -> dict:
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                   json={"model": "gpt-4o-mini", "messages": HI})
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    return r.json()["error"]


def test_a_killed_worker_leaks_no_concurrency_slot(system):
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    provider = system.instance_provider(name="Limited", enable_for=(tenant,))
    services.provider_update(actor=SYSTEM, provider=provider, max_concurrency=SLOTS)
    system.settle()
    leases = redis.Redis.from_url(system.redis_url)
    lease_key = f"eneo:leases:{provider.pk}"
    leases.delete(lease_key)  # none of an earlier session's provider with the same id
    master = system.web.proc.pid
    started = system.web.count("Started server process")
    killed = None
    system.upstream.set_latency(4000, spread_stream=True)  # each stream lasts 4 s, its events 0.5 s apart
    try:
        # SLOTS streams hold every slot, across both workers
        opened = threading.Barrier(SLOTS + 1)
        streams = _open_streams(system.url, key, SLOTS, opened)
        opened.wait(15)
        holders = [m.decode().split(":")[0] for m in leases.zrange(lease_key, 0, -1)]
        assert len(holders) == SLOTS, holders
        assert "concurrency limit (4 calls in flight)" in _refused(system.url, key)["message"]

        # SIGKILL the worker holding the most of them, mid-stream: it releases nothing
        victim = int(max(set(holders), key=holders.count))
        assert victim in _children(master), (victim, _children(master))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        assert str(victim).encode() in b" ".join(leases.zrange(lease_key, 0, -1))  # still there, for now
        outcomes = [f.result(timeout=30) for f in streams]
        ended = [last for _, last in outcomes].count("data: [DONE]")
        assert ended == SLOTS - holders.count(str(victim)), outcomes  # only the other worker's streams ended

        # after the lease time, the full concurrency is back: SLOTS concurrent streams, and not one more
        time.sleep(max(0.0, killed + LEASE_SECONDS + 0.5 - time.monotonic()))
        opened = threading.Barrier(SLOTS + 1)
        streams = _open_streams(system.url, key, SLOTS, opened)
        opened.wait(15)
        assert "concurrency limit" in _refused(system.url, key)["message"]
        outcomes = [f.result(timeout=30) for f in streams]
        assert outcomes == [(200, "data: [DONE]")] * SLOTS, outcomes
        assert leases.zcard(lease_key) == 0  # every stream released its slot when it ended
    finally:
        system.upstream.set_latency(0, spread_stream=False)
        if killed is not None:  # uvicorn replaces the killed worker: let it start before the next test
            system.wait_for(lambda: system.web.count("Started server process") > started, timeout=60,
                            what="uvicorn restarting the killed worker")


def test_a_client_leaving_mid_stream_frees_its_slot(system):
    """Under the real server (gc.freeze, a raised GC threshold), a stream whose client went away ends at once and
    releases its slot: long before the stream would have ended, and without waiting for the lease to expire."""
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    provider = system.instance_provider(name="One at a time", enable_for=(tenant,))
    services.provider_update(actor=SYSTEM, provider=provider, max_concurrency=1)
    system.settle()
    leases = redis.Redis.from_url(system.redis_url)
    lease_key = f"eneo:leases:{provider.pk}"
    leases.delete(lease_key)
    system.upstream.set_latency(4500, spread_stream=True)
    try:
        with httpx.stream("POST", system.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "gpt-4o-mini", "stream": True, "messages": HI}, timeout=20) as r:
            lines = r.iter_lines()
            assert r.status_code == 200 and next(lines).startswith("data: ")
            assert leases.zcard(lease_key) == 1
            assert "concurrency limit (1 calls in flight)" in _refused(system.url, key)["message"]
        left = time.monotonic()  # the connection is closed, the stream unread
        system.wait_for(lambda: leases.zcard(lease_key) == 0, timeout=5, interval=0.05,
                        what="the slot of the stream the client left")
        # a lease left to expire would live >= 2/3 of LEASE_SECONDS more (renewed every third of it)
        assert time.monotonic() - left < LEASE_SECONDS * 0.5, "released when the lease expired or the stream ended"
    finally:
        system.upstream.set_latency(0, spread_stream=False)
    r = httpx.post(system.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                   json={"model": "gpt-4o-mini", "messages": HI})
    assert r.status_code == 200, r.text
