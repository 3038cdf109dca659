"""The usage ledger on the real topology (topology.py: uvicorn with two workers, PostgreSQL): under concurrent load,
with clients that go away early, every call the upstream received has exactly one usage record, and every call
refused for a known tenant has one too."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from providers.models import UsageRecord
from tenants.scopes import Scope

HI = [{"role": "user", "content": "hi there"}]
CALLS = 40  # kinds, in turn: answered, streamed, closed before the answer, stream closed after its first content


def _call(url: str, key: str, kind: int, start: threading.Barrier) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    chat = url + "/v1/chat/completions"
    start.wait()
    if kind == 0:
        r = httpx.post(chat, headers=headers, json={"model": "gpt-4o-mini", "messages": HI}, timeout=20)
        assert r.status_code == 200, r.text
        return "answered"
    if kind == 1:
        with httpx.stream("POST", chat, headers=headers, timeout=20,
                          json={"model": "gpt-4o-mini", "stream": True, "messages": HI}) as r:
            lines = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and lines[-1] == "data: [DONE]", lines
        return "answered"
    if kind == 2:
        try:
            httpx.post(chat, headers=headers, json={"model": "gpt-4o-mini", "messages": HI}, timeout=0.2)
        except httpx.TimeoutException:
            return "left"
        return "answered"  # the gateway was quicker than the client's patience
    with httpx.stream("POST", chat, headers=headers, timeout=20,
                      json={"model": "gpt-4o-mini", "stream": True, "messages": HI}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return "left"  # closes the connection with the rest of the stream unread
    return "answered"


def test_every_call_the_upstream_received_has_one_usage_record(system):
    tenant = system.tenant()
    key = system.api_key(tenant, Scope.GATEWAY)
    system.instance_provider(enable_for=(tenant,))
    system.settle()
    system.upstream.set_latency(600, spread_stream=True)  # a stream's 8 events 75 ms apart
    try:
        start = threading.Barrier(CALLS + 3)
        with ThreadPoolExecutor(CALLS + 3) as pool:
            futures = [pool.submit(_call, system.url, key, i % 4, start) for i in range(CALLS)]
            refused = [pool.submit(lambda: (start.wait(), httpx.post(
                system.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                json={"model": "no-such-model", "messages": HI}).status_code)[1]) for _ in range(3)]
            outcomes = Counter(f.result() for f in futures)
            assert [f.result() for f in refused] == [404] * 3
        assert outcomes["left"] >= CALLS // 4, outcomes

        def settled():
            received = len([r for r in system.upstream.requests if r["path"].endswith("/chat/completions")])
            rows = Counter(UsageRecord.objects.filter(tenant=tenant).values_list("status", flat=True))
            return (received, rows) if received and sum(rows.values()) - rows["refused"] == received else None

        deadline = time.monotonic() + 15
        while (found := settled()) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        received = len([r for r in system.upstream.requests if r["path"].endswith("/chat/completions")])
        rows = Counter(UsageRecord.objects.filter(tenant=tenant).values_list("status", flat=True))
        assert found is not None, f"upstream received {received} chat calls, usage rows: {dict(rows)}"
        time.sleep(0.5)  # nothing more comes: one record per call, not two
        assert Counter(UsageRecord.objects.filter(tenant=tenant).values_list("status", flat=True)) == rows
        assert rows["refused"] == 3
        assert set(rows) <= {"ok", "client_closed", "refused"}, rows
        # A client that left may still have been sent everything (its close noticed after the end): then it is ok.
        assert rows["ok"] >= outcomes["answered"] and rows["client_closed"] >= outcomes["left"] // 2, (rows, outcomes)
        closed = UsageRecord.objects.filter(tenant=tenant, status="client_closed")
        for row in closed.filter(streamed=False):  # ran to its end: the provider's own count
            assert (row.tokens_in, row.tokens_out, row.tokens_estimated) == (2, 4, False)
        for row in closed.filter(streamed=True):  # cut short: what was relayed, counted (unless the usage came)
            assert row.tokens_in > 0 and (row.tokens_estimated or (row.tokens_in, row.tokens_out) == (2, 4)), row
    finally:
        system.upstream.set_latency(0, spread_stream=False)

