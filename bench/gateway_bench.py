"""Gateway benchmark: direct calls vs our gateway vs the LiteLLM Proxy, against the same fake upstream.

    .venv/bin/python bench/gateway_bench.py [--requests 2000] [--concurrency 32] [--upstream-latency-ms 20]
                                            [--endpoint chat|responses|messages]

Starts, on 127.0.0.1 only: the fake upstream (tests/fake_upstream), our ASGI app under uvicorn (one worker,
SQLite in a temp dir), and the LiteLLM Proxy from its own virtualenv (bench/.venv-proxy, see README.md),
both with one worker and pointing at the same upstream. For non-streaming and streaming calls of one endpoint
(chat completions by default; OpenAI's Responses API, or Anthropic's Messages API, which both servers answer
for an OpenAI model through LiteLLM's adapter) it
runs a warm-up, then N requests at the given concurrency per target, and prints requests/s, p50/p99 latency,
the latency added over a direct call, errors, and the server's CPU time per request (user+system CPU of the
server process tree divided by requests). Results are also written to bench/results/gateway.json (chat) or
bench/results/gateway-<endpoint>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark"}]

# endpoint -> (path, request body for a model, bytes a complete non-streamed answer holds, a stream's last event)
ENDPOINTS = {
    "chat": ("/v1/chat/completions", lambda model, stream: {"model": model, "messages": MESSAGES, "max_tokens": 16,
                                                            "stream": stream}, b'"choices"', b"data: [DONE]"),
    "responses": ("/v1/responses", lambda model, stream: {"model": model, "input": MESSAGES[0]["content"],
                                                          "max_output_tokens": 16, "stream": stream},
                  b'"output"', b"response.completed"),
    "messages": ("/v1/messages", lambda model, stream: {"model": model, "messages": MESSAGES, "max_tokens": 16,
                                                        "stream": stream}, b'"content"', b"message_stop"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process and all its live descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            f = stats[p]
            total += (int(f[11]) + int(f[12])) / TICK
        todo.extend(children.get(p, []))
    return total


def wait_http(url: str, timeout: float = 90.0, headers=None):
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def start(cmd, env=None, log=None):
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def setup_gateway(tmp: Path, upstream: str) -> tuple[dict, str]:
    from cryptography.fernet import Fernet

    env = {
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{tmp / 'bench.sqlite3'}"),
        "SECRET_KEY": secrets.token_urlsafe(50), "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "DEBUG": "false", "SECURE_SSL_REDIRECT": "false", "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING", "ENV_FILE": "/nonexistent", "CELERY_BROKER_URL": "memory://",
        # the tenant's provider points at the fake upstream on loopback: an internal host an operator approved
        "ENDPOINT_ALLOWED_HOSTS": "127.0.0.1",
        "VAR_DIR": str(tmp / "var"),  # its own metrics folder (PROMETHEUS_MULTIPROC_DIR) and static files
    }
    subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env={**os.environ, **env}, check=True)
    code = f"""
from providers import services
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.services import tenant_create
t = tenant_create(actor=SYSTEM, name="Bench", slug="bench")
p = services.provider_create(actor=SYSTEM, tenant=t, name="Upstream", provider_type="openai",
                             base_url="{upstream}/v1", api_key="sk-bench-upstream-key-0001")
services.model_create(actor=SYSTEM, provider=p, model_id="gpt-4o-mini", alias="fast")
print(api_key_create(actor=SYSTEM, tenant=t, name="bench", scopes=["gateway:Use"]).plaintext)
"""
    out = subprocess.run([PY, "manage.py", "shell", "-c", code], cwd=ROOT, env={**os.environ, **env}, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return env, out


def proxy_config(tmp: Path, upstream: str) -> Path:
    cfg = tmp / "proxy.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: fast\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-bench-upstream-key-0001\n"
        "general_settings:\n"
        "  master_key: sk-bench-master-key\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  num_retries: 0\n"
        "  use_chat_completions_url_for_anthropic_messages: true\n"  # as our gateway: /v1/messages -> chat
    )
    return cfg


async def one_request(session, url, headers, body, stream, endpoint="chat") -> tuple[float, bool]:
    _, _, complete, last = ENDPOINTS[endpoint]
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as r:
            if stream:
                ok_done = False
                async for line in r.content:
                    if last in line:
                        ok_done = True
                ok = r.status == 200 and ok_done
            else:
                data = await r.read()
                ok = r.status == 200 and complete in data
    except Exception:  # noqa: BLE001
        ok = False
    return time.perf_counter() - started, ok


async def run_load(url, headers, body, *, n, concurrency, stream, endpoint):
    latencies, errors = [], 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        queue = iter(range(n))

        async def worker():
            nonlocal errors
            for _ in queue:
                latency, ok = await one_request(session, url, headers, body, stream, endpoint)
                latencies.append(latency)
                errors += 0 if ok else 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return latencies, errors, elapsed


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(name, target, *, n, concurrency, stream, warmup, endpoint="chat"):
    path, make_body, _, _ = ENDPOINTS[endpoint]
    url, headers, pid = target["base"] + path, target["headers"], target.get("pid")
    body = make_body(target["model"], stream)
    asyncio.run(run_load(url, headers, body, n=warmup, concurrency=concurrency, stream=stream, endpoint=endpoint))
    cpu0 = tree_cpu_seconds(pid) if pid else 0.0
    latencies, errors, elapsed = asyncio.run(run_load(url, headers, body, n=n, concurrency=concurrency,
                                                      stream=stream, endpoint=endpoint))
    cpu1 = tree_cpu_seconds(pid) if pid else 0.0
    return {
        "target": name, "endpoint": endpoint, "stream": stream, "requests": n, "concurrency": concurrency, "errors": errors,
        "rps": round(n / elapsed, 1), "p50_ms": round(pct(latencies, 50) * 1000, 2),
        "p99_ms": round(pct(latencies, 99) * 1000, 2), "mean_ms": round(statistics.mean(latencies) * 1000, 2),
        "server_cpu_ms_per_request": round((cpu1 - cpu0) * 1000 / n, 2) if pid else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--upstream-latency-ms", type=float, default=20.0)
    parser.add_argument("--proxy-venv", default=str(ROOT / "bench" / ".venv-proxy"))
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--only", choices=["nonstream", "stream"], default=None)
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="chat")
    parser.add_argument("--compare-metrics", action="store_true",
                        help="also run a second gateway with METRICS_ENABLED=false (the cost of /metrics)")
    parser.add_argument("--compare-lane", action="store_true",
                        help="also run a gateway with GATEWAY_LEAN_LANE=false (every call through LiteLLM)")
    args = parser.parse_args()

    procs = []
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        up_port, gw_port, px_port = free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        try:
            procs.append(start([PY, "-m", "tests.fake_upstream", "--port", str(up_port), "--latency-ms",
                                str(args.upstream_latency_ms), "--spread"]))
            wait_http(upstream + "/__control/config")
            env, api_key = setup_gateway(tmp, upstream)
            gw_log = open(tmp / "gateway.log", "w")

            def gateway(port, **extra_env):
                """Our gateway under uvicorn (one worker) on `port`, with these settings changed."""
                proc = start([str(Path(PY).parent / "uvicorn"), "eneo_site.asgi:application", "--host", "127.0.0.1",
                              "--port", str(port), "--no-access-log", "--log-level", "warning", "--lifespan", "off"],
                             env={**env, **extra_env}, log=gw_log)
                procs.append(proc)
                wait_http(f"http://127.0.0.1:{port}/healthz")
                return {"base": f"http://127.0.0.1:{port}", "model": "fast",
                        "headers": {"Authorization": f"Bearer {api_key}"}, "pid": proc.pid}

            targets = {
                "direct": {"base": upstream, "model": "gpt-4o-mini",
                           "headers": {"Authorization": "Bearer sk-bench-upstream-key-0001",
                                       "x-api-key": "sk-bench-upstream-key-0001", "anthropic-version": "2023-06-01"}},
                "gateway": gateway(gw_port),
            }
            if args.compare_metrics:
                targets["gateway-nometrics"] = gateway(free_port(), METRICS_ENABLED="false")
            if args.compare_lane:
                targets["gateway-litellm"] = gateway(free_port(), GATEWAY_LEAN_LANE="false")
            proxy_version = None
            proxy_bin = Path(args.proxy_venv) / "bin" / "litellm"
            if not args.skip_proxy and proxy_bin.exists():
                proxy_version = subprocess.run(
                    [str(Path(args.proxy_venv) / "bin" / "python"), "-c",
                     "import importlib.metadata as m; print(m.version('litellm'))"],
                    capture_output=True, text=True).stdout.strip()
                px_log = open(tmp / "proxy.log", "w")
                px = start([str(proxy_bin), "--config", str(proxy_config(tmp, upstream)), "--host", "127.0.0.1",
                            "--port", str(px_port), "--num_workers", "1"],
                           env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                                "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True"}, log=px_log)
                procs.append(px)
                wait_http(f"http://127.0.0.1:{px_port}/health/liveliness", timeout=180)
                targets["litellm-proxy"] = {"base": f"http://127.0.0.1:{px_port}", "model": "fast", "pid": px.pid,
                                            "headers": {"Authorization": "Bearer sk-bench-master-key"}}
            elif not args.skip_proxy:
                print(f"(LiteLLM Proxy not installed at {proxy_bin}: see bench/README.md; skipping it)")
            modes = [False, True] if args.only is None else [args.only == "stream"]
            for stream in modes:
                for name, target in targets.items():
                    res = measure(name, target, n=args.requests, concurrency=args.concurrency, stream=stream,
                                  warmup=args.warmup, endpoint=args.endpoint)
                    results.append(res)
                    print(json.dumps(res), flush=True)
        finally:
            for proc in reversed(procs):
                stop(proc)

    print()
    header = f"{'target':<18}{'mode':<11}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}" \
             f"{'errors':>8}{'CPU ms/req':>12}"
    print(header)
    for res in results:
        direct = next(r for r in results if r["target"] == "direct" and r["stream"] == res["stream"])
        res["added_p50_ms"] = round(res["p50_ms"] - direct["p50_ms"], 2)
        res["added_p99_ms"] = round(res["p99_ms"] - direct["p99_ms"], 2)
        cpu = res["server_cpu_ms_per_request"]
        print(f"{res['target']:<18}{'stream' if res['stream'] else 'non-stream':<11}{res['rps']:>9}"
              f"{res['p50_ms']:>9}{res['p99_ms']:>9}{res['added_p50_ms']:>9}{res['added_p99_ms']:>9}"
              f"{res['errors']:>8}{'' if cpu is None else cpu:>12}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "gateway.json" if args.endpoint == "chat" else f"gateway-{args.endpoint}.json"
    (out / name).write_text(json.dumps({
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "litellm_proxy_version": proxy_version,
        "upstream_latency_ms": args.upstream_latency_ms, "results": results}, indent=2))


if __name__ == "__main__":
    main()
