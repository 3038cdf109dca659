"""Health-check run over many providers on the fake upstream (some slow, some dead, some hanging).

    .venv/bin/python bench/health_bench.py [--providers 1000] [--slow 0.05] [--dead 0.02] [--hanging 0.02]

Creates the providers in a temporary SQLite database (openai-compatible ones are probed with GET /models,
Azure ones with a 1-token completion through LiteLLM), then runs the scheduled task `health_checks_run`
(its batches inline, i.e. one worker) and prints the wall time and the outcome counts.
Target: under 30 s for 1,000 providers with HEALTH_CHECK_TIMEOUT=10.
"""
import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--providers", type=int, default=1000)
    parser.add_argument("--slow", type=float, default=0.05, help="share answering after 3 s")
    parser.add_argument("--dead", type=float, default=0.02, help="share with nothing listening")
    parser.add_argument("--hanging", type=float, default=0.02, help="share never answering (hits the timeout)")
    parser.add_argument("--azure", type=float, default=0.2, help="share probed with a completion (Azure)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    from cryptography.fernet import Fernet

    os.environ.update({
        "DATABASE_URL": f"sqlite:///{tmp / 'health.sqlite3'}", "SECRET_KEY": secrets.token_urlsafe(50),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(), "ENV_FILE": "/nonexistent", "LOG_LEVEL": "ERROR",
        "CELERY_TASK_ALWAYS_EAGER": "true", "CELERY_BROKER_URL": "memory://", "HEALTH_CHECK_TIMEOUT": "10",
        "DJANGO_SETTINGS_MODULE": "eneo_site.settings",
    })
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--latency-ms", "20"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        import httpx

        for _ in range(50):
            try:
                httpx.get(f"http://127.0.0.1:{port}/__control/config")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        run(args, f"http://127.0.0.1:{port}")
    finally:
        up.terminate()


def run(args, upstream):
    import httpx

    from providers import services
    from providers.models import Provider
    from providers.tasks import health_checks_run
    from tenants.actors import SYSTEM

    rng = random.Random(7)
    dead_base = f"http://127.0.0.1:{free_port()}"
    kinds = {"ok": 0, "slow": 0, "dead": 0, "hanging": 0}
    t0 = time.monotonic()
    for i in range(args.providers):
        key = f"sk-health-{i:05d}"
        r = rng.random()
        kind = ("slow" if r < args.slow else "dead" if r < args.slow + args.dead
                else "hanging" if r < args.slow + args.dead + args.hanging else "ok")
        kinds[kind] += 1
        if kind == "slow":
            httpx.post(f"{upstream}/__control/fault", json={"mode": "slow", "seconds": 3, "key": key})
        if kind == "hanging":
            httpx.post(f"{upstream}/__control/fault", json={"mode": "timeout", "seconds": 60, "key": key})
        base = dead_base if kind == "dead" else upstream
        if rng.random() < args.azure:
            p = services.provider_create(actor=SYSTEM, tenant=None, name=f"azure-{i}", provider_type="azure",
                                         base_url=base, api_version="2024-06-01", api_key=key)
            services.model_create(actor=SYSTEM, provider=p, model_id="gpt4o-deploy")
        else:
            services.provider_create(actor=SYSTEM, tenant=None, name=f"openai-{i}", provider_type="openai",
                                     base_url=base + "/v1", api_key=key)
    print(f"created {args.providers} providers in {time.monotonic() - t0:.1f} s: {kinds}")

    started = time.monotonic()
    health_checks_run()
    wall = time.monotonic() - started
    counts = {}
    for status in Provider.objects.values_list("health_status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    result = {"providers": args.providers, "kinds": kinds, "wall_seconds": round(wall, 2), "statuses": counts,
              "health_check_timeout_s": 10, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(result))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "health.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
