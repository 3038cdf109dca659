"""CPU cost of the gateway's provider limiter per call (acquire + release, a provider with rpm, tpm and
max_concurrency set), in process and through Redis; for comparison the counter-based limiter it replaced (commit
3aa594f) and, if importable, the `limits` library (PyPI; not a dependency) doing the rpm + tpm checks alone.

    .venv/bin/pip install --target /tmp/limits_eval limits==5.8.0    # optional, outside the project's venv
    .venv/bin/python bench/limiter_bench.py [--calls 20000] [--redis redis://127.0.0.1:6379/15]
                                            [--limits-path /tmp/limits_eval] [--old-ref 3aa594f]

Redis keys of the benchmark's provider (id 424242) are written, then removed. CPU is this process's (user +
system) per call; the Redis server's own CPU is not counted (it usually runs elsewhere).
"""
import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROVIDER = SimpleNamespace(pk=424242, rpm=10**9, tpm=10**9, max_concurrency=10**6)


def configure(redis_url):
    from django.conf import settings

    settings.configure(RATE_LIMIT_REDIS_URL=redis_url, GATEWAY_LEASE_SECONDS=30.0)


def old_limiter(ref):
    """providers/gateway/limits.py as of `ref`, as a module of its own."""
    source = subprocess.run(["git", "show", f"{ref}:providers/gateway/limits.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_limits.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_limits", path)
    module = sys.modules["old_limits"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def forget(url):
    """Remove this benchmark's keys (its provider's counters and leases, the `limits` library's)."""
    import redis

    client = redis.Redis.from_url(url)
    for pattern in (f"eneo:*:{PROVIDER.pk}*", f"LIMITS:*{PROVIDER.pk}*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)


async def measure(name, one, calls):
    for _ in range(500):  # warm-up (connections, scripts loaded)
        await one()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await one()
    cpu = (time.process_time() - cpu0) * 1e6 / calls
    wall = (time.perf_counter() - t0) * 1e6 / calls
    print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    return cpu


async def run(args):
    from django.conf import settings

    from providers.gateway import limits as new

    old = old_limiter(args.old_ref)
    print("| limiter | CPU us/call | wall us/call |\n|---|---|---|")

    # in process
    settings.RATE_LIMIT_REDIS_URL = ""
    lim = old.Limiter()

    async def old_local():
        assert await lim.acquire(PROVIDER) is None
        await lim.release(PROVIDER)

    await measure(f"previous ({args.old_ref}), in process", old_local, args.calls)
    nlim = new.Limiter(redis_url="")

    async def new_local():
        lease = await nlim.acquire(PROVIDER)
        await lease.release()

    await measure("new, in process", new_local, args.calls)
    unlimited = SimpleNamespace(pk=1, rpm=None, tpm=None, max_concurrency=None)

    async def new_unlimited():
        lease = await nlim.acquire(unlimited)
        await lease.release()

    await measure("new, a provider without limits", new_unlimited, args.calls)

    # Redis
    forget(args.redis)
    settings.RATE_LIMIT_REDIS_URL = args.redis
    lim = old.Limiter()
    await measure(f"previous ({args.old_ref}), Redis", old_local, args.calls)
    nlim = new.Limiter(redis_url=args.redis)
    await measure("new, Redis (1 script + ZREM)", new_local, args.calls)

    # the `limits` library: rpm (fixed window hit) + tpm (test), no concurrency (it has none)
    if args.limits_path:
        sys.path.insert(0, args.limits_path)
    try:
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import MemoryStorage, RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter
    except ImportError:
        print("(the `limits` library is not importable: pass --limits-path)")
        return
    rpm, tpm = RateLimitItemPerMinute(PROVIDER.rpm), RateLimitItemPerMinute(PROVIDER.tpm)
    for label, storage in (("memory", MemoryStorage()),
                           ("Redis", RedisStorage("async+" + args.redis, implementation="redispy"))):
        limiter = FixedWindowRateLimiter(storage)

        async def lib():
            assert await limiter.test(tpm, "tpm", str(PROVIDER.pk))
            assert await limiter.hit(rpm, "rpm", str(PROVIDER.pk))

        await measure(f"`limits` {__import__('limits').__version__} fixed window, {label}: rpm hit + tpm test "
                      f"(no concurrency)", lib, args.calls)
    forget(args.redis)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--redis", default=os.environ.get("RATE_LIMIT_REDIS_URL") or "redis://127.0.0.1:6379/15")
    parser.add_argument("--limits-path", default="")
    parser.add_argument("--old-ref", default="3aa594f")  # the last counter-based limiter
    args = parser.parse_args()
    configure(args.redis)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
