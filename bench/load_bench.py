"""Load: gateway requests (10,000 by default; issue 15 asks for 100,000) at concurrency 64 against the fake upstream,
with zero errors expected, and the server's memory (RSS of its process tree) idle, before, in the middle and after;
beside it the LiteLLM Proxy's idle RSS.

    .venv/bin/python bench/load_bench.py [--requests 10000] [--concurrency 64] [--stream-share 0.3]

Runs the requests in two halves after a warm-up and reports RSS after each: growth should flatten (caches
warm) rather than rise with the number of requests. Bound: RSS growth under 64 MiB over the run.
"""
import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import gateway_bench as gb


def rss_mib(pid: int) -> float:
    total, todo = 0, [pid]
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                pass
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
        todo.extend(children.get(p, []))
    return round(total / 1024, 1)


async def mixed(url, headers, n, concurrency, stream_share):
    """n requests, a share of them streamed; returns (errors, elapsed)."""
    import aiohttp

    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        queue = iter(range(n))

        async def worker():
            nonlocal errors
            for i in queue:
                stream = (i % 100) < stream_share * 100
                body = {"model": "fast", "messages": gb.MESSAGES, "max_tokens": 16, "stream": stream}
                _, ok = await gb.one_request(session, url, headers, body, stream, "chat")
                errors += 0 if ok else 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return errors, time.perf_counter() - t0


def proxy_idle_rss(venv: Path) -> float | None:
    """The LiteLLM Proxy's RSS once it answers its liveness probe (one worker, no database), or None."""
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        return None
    with tempfile.TemporaryDirectory() as tmpdir:
        port = gb.free_port()
        proc = gb.start([str(binary), "--config", str(gb.proxy_config(Path(tmpdir), "http://127.0.0.1:9")),
                         "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                             "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True"})
        try:
            gb.wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
            time.sleep(2)
            return rss_mib(proc.pid)
        finally:
            gb.stop(proc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream-share", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=1000, help="requests before the first RSS reading")
    parser.add_argument("--proxy-venv", default=str(gb.ROOT / "bench" / ".venv-proxy"),
                        help="the LiteLLM Proxy's virtualenv, for its idle RSS beside ours")
    args = parser.parse_args()
    proxy_idle = proxy_idle_rss(Path(args.proxy_venv))
    procs = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        up_port, gw_port = gb.free_port(), gb.free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        try:
            procs.append(gb.start([gb.PY, "-m", "tests.fake_upstream", "--port", str(up_port), "--latency-ms", "20"]))
            gb.wait_http(upstream + "/__control/config")
            env, api_key = gb.setup_gateway(tmp, upstream)
            gw = gb.start([str(Path(gb.PY).parent / "uvicorn"), "eneo_site.asgi:application", "--host", "127.0.0.1",
                           "--port", str(gw_port), "--no-access-log", "--log-level", "warning", "--lifespan", "off"],
                          env=env)
            procs.append(gw)
            gb.wait_http(f"http://127.0.0.1:{gw_port}/healthz")
            time.sleep(2)
            idle = rss_mib(gw.pid)
            url, headers = f"http://127.0.0.1:{gw_port}/v1/chat/completions", {"Authorization": f"Bearer {api_key}"}
            asyncio.run(mixed(url, headers, args.warmup, args.concurrency, args.stream_share))  # warm-up
            before = rss_mib(gw.pid)
            half = args.requests // 2
            e1, t1 = asyncio.run(mixed(url, headers, half, args.concurrency, args.stream_share))
            middle = rss_mib(gw.pid)
            e2, t2 = asyncio.run(mixed(url, headers, args.requests - half, args.concurrency, args.stream_share))
            after = rss_mib(gw.pid)
        finally:
            for proc in reversed(procs):
                gb.stop(proc)
    result = {"requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency,
              "stream_share": args.stream_share,
              "errors": e1 + e2, "rps": round(args.requests / (t1 + t2), 1), "rss_mib_idle": idle,
              "proxy_rss_mib_idle": proxy_idle, "rss_mib_before": before,
              "rss_mib_middle": middle, "rss_mib_after": after, "rss_growth_mib": round(after - before, 1),
              "bound_mib": 64, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(result))
    out = gb.ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "load.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
