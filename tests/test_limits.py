"""Provider limits (providers/gateway/limits.py): one fixed-window algorithm for rpm and tpm in process and through
Redis; concurrency leases that end with the response or the whole stream, or when the client goes away; Redis
leases of a holder that died expire by themselves, leases of a live holder are renewed. Every behaviour that both
stores have is checked in both (fixture `store`)."""
from __future__ import annotations

import asyncio
import gc
import time
import uuid
from types import SimpleNamespace

import httpx
import openai
import pytest
import redis

from providers.gateway.limits import Denied, Lease, Limiter
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import openai_client, wait_for
from .factories import make_model, make_provider

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "x"}]}


@pytest.fixture(params=["process", "redis"])
def store(request, settings):
    """The limiter's store for this test: "" (in process) or the Redis URL; the gateway follows it too."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    settings.RATE_LIMIT_REDIS_URL = url
    return url


def _provider(**limits):
    """A provider as the limiter sees it; a fresh id, so that no count of an earlier run applies."""
    fields = {"rpm": None, "tpm": None, "max_concurrency": None, **limits}
    return SimpleNamespace(pk=uuid.uuid4().int % 10**12, **fields)


def _same_minute(margin: float = 6.0):
    """The windows are calendar minutes: wait rather than straddle one."""
    while time.time() % 60 > 60 - margin:
        time.sleep(0.2)


# --- the algorithm, in both stores ---------------------------------------------------------------------------

def test_rpm_is_a_fixed_window_per_minute(store):
    _same_minute()
    provider, limiter = _provider(rpm=2), Limiter(redis_url=store)

    async def run():
        for _ in range(2):
            lease = await limiter.acquire(provider)
            assert isinstance(lease, Lease) and not lease.held  # no max_concurrency: nothing to hold
        return await limiter.acquire(provider)

    denied = asyncio.run(run())
    assert isinstance(denied, Denied)
    assert denied.reason == "the provider's rate limit (2 requests per minute) is reached"
    assert 1 <= denied.retry_after <= 60 - int(time.time() % 60) + 1


def test_tpm_counts_the_tokens_of_finished_calls(store):
    _same_minute()
    provider, limiter = _provider(tpm=10), Limiter(redis_url=store)

    async def run():
        assert isinstance(await limiter.acquire(provider), Lease)
        await limiter.add_tokens(provider, 6)
        assert isinstance(await limiter.acquire(provider), Lease)  # 6 < 10: a call may start
        await limiter.add_tokens(provider, 6)
        return await limiter.acquire(provider)

    denied = asyncio.run(run())
    assert isinstance(denied, Denied) and "token limit (10 tokens per minute)" in denied.reason
    assert 1 <= denied.retry_after <= 60


def test_concurrency_lease_release_is_idempotent(store):
    provider, limiter = _provider(max_concurrency=2), Limiter(redis_url=store)

    async def run():
        first, second = await limiter.acquire(provider), await limiter.acquire(provider)
        assert first.held and second.held and await limiter.in_use(provider) == 2
        denied = await limiter.acquire(provider)
        assert denied == Denied("the provider's concurrency limit (2 calls in flight) is reached", 1)
        for _ in range(3):
            await first.release()
        assert not first.held and await limiter.in_use(provider) == 1  # released once, however often called
        third = await limiter.acquire(provider)
        assert third.held and isinstance(await limiter.acquire(provider), Denied)
        await second.release()
        await third.release()
        assert await limiter.in_use(provider) == 0

    asyncio.run(run())


def test_a_refused_call_consumes_nothing(store):
    _same_minute()
    provider, limiter = _provider(rpm=2, max_concurrency=1), Limiter(redis_url=store)

    async def run():
        held = await limiter.acquire(provider)  # request 1 of 2
        assert "concurrency limit" in (await limiter.acquire(provider)).reason  # refused: not counted
        await held.release()
        again = await limiter.acquire(provider)  # request 2 of 2
        assert again.held
        await again.release()
        assert "rate limit (2 requests per minute)" in (await limiter.acquire(provider)).reason
        assert await limiter.in_use(provider) == 0  # the rpm refusal took no slot either

    asyncio.run(run())


def test_a_lease_dropped_without_release_ends_with_its_holder(store, settings):
    """A holder that is gone (the object collected, e.g. a stream generator that was never run) frees its slot,
    also while the heartbeat renews the other leases."""
    settings.GATEWAY_LEASE_SECONDS = 0.6  # Redis: renewed every 0.2 s
    provider, limiter = _provider(max_concurrency=2), Limiter(redis_url=store)

    async def run():
        kept, dropped = await limiter.acquire(provider), await limiter.acquire(provider)
        assert dropped.held and isinstance(await limiter.acquire(provider), Denied)
        await asyncio.sleep(0.5)  # a few heartbeats
        del dropped
        gc.collect()
        for _ in range(40):  # Redis: the release is sent from the event loop
            if await limiter.in_use(provider) == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the dropped lease still holds its slot")
        lease = await limiter.acquire(provider)
        assert lease.held
        await lease.release()
        await kept.release()
        assert await limiter.in_use(provider) == 0

    asyncio.run(run())


# --- Redis leases: expiry and renewal --------------------------------------------------------------------------

def test_the_leases_of_a_dead_holder_expire(redis_url, settings):
    """A holder that dies without releasing (here: its event loop is gone, so it neither releases nor renews)
    blocks the slot for at most GATEWAY_LEASE_SECONDS; another limiter (another worker) then gets it."""
    settings.GATEWAY_LEASE_SECONDS = 1.0
    provider = _provider(max_concurrency=1)
    holder, other = Limiter(redis_url=redis_url), Limiter(redis_url=redis_url)
    kept = []

    async def take():
        kept.append(await holder.acquire(provider))  # kept alive: never collected, never released

    asyncio.run(take())
    assert kept[0].held
    died = time.monotonic()

    async def wait_for_slot():
        assert isinstance(await other.acquire(provider), Denied)
        while True:
            lease = await other.acquire(provider)
            if not isinstance(lease, Denied):
                return lease, time.monotonic() - died
            await asyncio.sleep(0.05)

    lease, after = asyncio.run(wait_for_slot())
    assert lease.held and 0.5 < after < 2.0, after
    asyncio.run(lease.release())


def test_a_live_holder_keeps_its_lease_beyond_the_lease_time(redis_url, settings):
    settings.GATEWAY_LEASE_SECONDS = 0.6
    provider = _provider(max_concurrency=1)
    holder, other = Limiter(redis_url=redis_url), Limiter(redis_url=redis_url)

    async def run():
        lease = await holder.acquire(provider)
        deadline = time.monotonic() + 2.5  # about four lease times: renewed by the holder's heartbeat
        while time.monotonic() < deadline:
            assert isinstance(await other.acquire(provider), Denied)
            await asyncio.sleep(0.1)
        await lease.release()
        assert (await other.acquire(provider)).held

    asyncio.run(run())


def test_a_lease_is_released_in_the_store_that_granted_it(redis_url, settings):
    """Granted in process (Redis was down), released after Redis is back: the in-process count goes down, Redis'
    is untouched (and the other way round)."""
    provider = _provider(max_concurrency=1)
    limiter = Limiter(redis_url=redis_url)

    async def run():
        assert await limiter.in_use(provider) == 0  # Redis is up
        limiter._down_until = time.monotonic() + 60  # as after a Redis failure
        local = await limiter.acquire(provider)
        assert limiter.local.in_use(provider.pk) == 1
        limiter._down_until = 0.0  # Redis is back
        shared = await limiter.acquire(provider)  # Redis knows nothing of the in-process lease
        assert shared.held and await limiter.in_use(provider) == 1
        await local.release()
        assert limiter.local.in_use(provider.pk) == 0 and await limiter.in_use(provider) == 1
        await shared.release()
        assert await limiter.in_use(provider) == 0

    asyncio.run(run())


# --- through the gateway ----------------------------------------------------------------------------------------

@pytest.fixture
def limited(gateway, upstream, tenant, store):
    """A provider with max_concurrency=1 behind alias "fast", an API key, and the gateway's view of it."""
    provider = make_provider(tenant=tenant, name="One at a time", base_url=upstream.url + "/v1", max_concurrency=1)
    make_model(provider, model_id="gpt-4o-mini", alias="fast")
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="k", scopes=["gateway:Use"]).plaintext
    if store:  # no lease or count of an earlier run's provider with the same id
        client = redis.Redis.from_url(store)
        client.delete(f"eneo:leases:{provider.pk}", *client.keys(f"eneo:[rt]pm:{provider.pk}:*"))
    yield SimpleNamespace(provider=provider, key=key, client=openai_client(gateway, key),
                          in_use=lambda: gateway.run_async(lambda: gateway.gw.limiter.in_use(provider)))
    upstream.set_latency(0, spread_stream=False)


def _assert_concurrency_refused(client):
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(**CHAT)
    assert exc.value.status_code == 429 and exc.value.response.headers["retry-after"] == "1"
    assert "concurrency limit (1 calls in flight)" in exc.value.message


def test_a_stream_holds_its_slot_until_it_ends(limited, upstream):
    upstream.set_latency(1500, spread_stream=True)  # the stream's chunks come over 1.5 s
    stream = limited.client.chat.completions.create(**CHAT, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices  # the first chunk is here; the stream goes on
    assert limited.in_use() == 1
    _assert_concurrency_refused(limited.client)
    rest = list(chunks)
    assert rest and rest[-1].choices[0].finish_reason == "stop"
    upstream.set_latency(0)
    assert limited.in_use() == 0  # released before the stream's end reached the client
    assert limited.client.chat.completions.create(**CHAT).choices


def test_a_client_leaving_mid_stream_frees_the_slot(limited, upstream, gateway):
    upstream.set_latency(4000, spread_stream=True)
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                         headers={"Authorization": f"Bearer {limited.key}"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # (kept: dropping it would close the connection)
            assert next(lines).startswith("data: ")
            assert limited.in_use() == 1
            _assert_concurrency_refused(limited.client)
        # leaving the block closed the connection mid-stream
    wait_for(lambda: limited.in_use() == 0, timeout=2)  # before the stream would have ended, or the lease expired
    upstream.set_latency(0)
    assert limited.client.chat.completions.create(**CHAT).choices


def test_a_call_the_client_left_holds_its_slot_until_the_upstream_answers(limited, upstream):
    """A non-streamed call goes on when its client leaves (the provider bills it: service._even_if_closed), so it
    keeps its slot until the upstream answered; then the slot is free."""
    upstream.set_fault("slow", seconds=3, times=1, path_contains="/chat/completions")
    impatient = openai.OpenAI(base_url=str(limited.client.base_url), api_key=limited.key, max_retries=0, timeout=0.5)
    left = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(**CHAT)
    assert limited.in_use() == 1
    _assert_concurrency_refused(limited.client)
    wait_for(lambda: limited.in_use() == 0, timeout=6)
    assert time.monotonic() - left > 2.5  # not before the upstream answered
    assert limited.client.chat.completions.create(**CHAT).choices


def test_a_failed_call_frees_the_slot(limited, upstream):
    upstream.set_fault("status", status=400, times=1, path_contains="/chat/completions")
    with pytest.raises(openai.BadRequestError):
        limited.client.chat.completions.create(**CHAT)
    assert limited.in_use() == 0
    upstream.set_fault("drop_stream", times=1, path_contains="/chat/completions")
    with pytest.raises(openai.APIError):  # the stream broke after it began: the error came in-band
        list(limited.client.chat.completions.create(**CHAT, stream=True))
    wait_for(lambda: limited.in_use() == 0, timeout=2)  # the client stops at the error event: the stream ends after
    assert limited.client.chat.completions.create(**CHAT).choices
