"""CPU cost of a bare litellm.acompletion call (no gateway), against the fake upstream, for reference.

    .venv/bin/python bench/litellm_baseline.py [--requests 2000] [--concurrency 32] [--stream]
"""
import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def run(n, concurrency, stream, url):
    import litellm

    async def one():
        r = await litellm.acompletion(model="openai/gpt-4o-mini", api_base=url + "/v1", api_key="sk-bench-0001",
                                      messages=[{"role": "user", "content": "Say hello"}], max_tokens=16,
                                      stream=stream, max_retries=0, num_retries=0)
        if stream:
            async for _ in r:
                pass

    sem = asyncio.Semaphore(concurrency)

    async def limited():
        async with sem:
            await one()

    await asyncio.gather(*(limited() for _ in range(200)))  # warm-up
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(n)))
    return (time.process_time() - cpu0) * 1000 / n, n / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    import subprocess

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--latency-ms", "20",
                           "--spread"], cwd=Path(__file__).resolve().parent.parent)
    time.sleep(2)
    try:
        cpu_ms, rps = asyncio.run(run(args.requests, args.concurrency, args.stream, f"http://127.0.0.1:{port}"))
    finally:
        up.terminate()
    print(f"bare litellm.acompletion ({'stream' if args.stream else 'non-stream'}): {cpu_ms:.2f} CPU ms per call "
          f"(client process, includes the client side of HTTP), {rps:.0f} calls/s")


if __name__ == "__main__":
    main()
