"""The real topology of the system tests: server processes, fake upstreams and helpers to drive them.

One `Topology` per test session (fixture `topology` in conftest.py):

- PostgreSQL: pytest-django's test database. System tests are transactional (fixture `system`): what the test
  process writes is committed, so the processes below see it at once.
- Redis, on a database index of its own (SYSTEM_TESTS_REDIS_DB, default 9): another test session's Celery
  worker on the same server never takes this session's tasks, nor the other way round.
- `web`: one uvicorn process with two workers serving eneo_site.asgi (REST at /api/v1, the gateway at /v1).
- `worker`: a Celery worker (threads pool); `beat`: Celery beat with django_celery_beat's DatabaseScheduler.
- Fake upstreams (tests/fake_upstream), each on its own loopback address and recording every request that
  reaches it: `upstream` (127.0.0.1), the legitimate provider, where the processes' global OPENAI_API_KEY
  (`canary`) is bound through OPENAI_API_BASE; `attacker` (127.0.0.2, in ENDPOINT_ALLOWED_HOSTS, so a tenant may
  save it as an endpoint); `outsider` (127.0.0.3, not in ENDPOINT_ALLOWED_HOSTS). The processes also hold a
  global ANTHROPIC_API_KEY (`anthropic_canary`) without ANTHROPIC_API_BASE: bound to Anthropic's own endpoint,
  so no fake upstream may ever see it.

Every process logs to a file in `log_dir`; `log_tails()` gives the end of each (conftest.py adds them to the
report of a failed test). Data is set up with the project's services in the test process (`tenant`, `api_key`,
`instance_provider`, `tenant_provider`), then tests act only from outside over HTTP (`openai`, `rest`).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
from django.conf import settings

from tests.fake_upstream import FakeUpstream, start_fake_upstream

ALLOWED_HOSTS = ("127.0.0.1", "127.0.0.2")
CATALOG_REFRESH_SECONDS = 0.2
USAGE_FLUSH_SECONDS = 0.1
LEASE_SECONDS = 2.0
STARTUP_TIMEOUT = 60.0
SCHEDULE_CHANGED = "DatabaseScheduler: Schedule changed."

# Never passed on from the developer's environment: global provider keys and endpoints, proxies, and the
# settings each topology sets itself.
_INHERITED_NEVER = {"VLLM_MODEL_URL", "AZURE_ENDPOINT", "AZURE_API_VERSION", "AZURE_DEPLOYMENT_NAME",
                    "ENDPOINT_ALLOWED_HOSTS", "TENANT_CREDENTIALS_ENABLED", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                    "http_proxy", "https_proxy", "all_proxy", "CELERY_RESULT_BACKEND", "DATABASE_URL", "REDIS_URL"}


def _inherited(name: str) -> bool:
    if name in _INHERITED_NEVER or name.endswith("_API_BASE"):
        return False
    return not name.endswith("_API_KEY") or "SUPER" in name  # SUPER_API_KEY: the REST sysadmin key


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_url_with_db(url: str, db: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def processes_database_url() -> str:
    """The test database (pytest-django's) as a DATABASE_URL for the processes."""
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class Service:
    """One server process in a process group of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.argv = name, argv
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of its group (uvicorn's worker processes, a hung Celery pool)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


class Topology:
    """See the module docstring. Attributes: url (gateway base URL), rest_url, canary, anthropic_canary, canaries,
    allowed_hosts, upstream, attacker, outsider, web, worker, beat, redis_url, database_url, log_dir.

    Another configuration (say TENANT_CREDENTIALS_ENABLED=true) is another Topology: pass `allowed_hosts` and
    `extra_env`, give it a Redis database of its own, start it in a fixture and use begin_test/end_test around
    each test as the `system` fixture does. Only one beat should run at a time: both would run the health
    checks a test schedules."""

    def __init__(self, *, redis_url: str, allowed_hosts: tuple[str, ...] = ALLOWED_HOSTS,
                 extra_env: dict[str, str] | None = None):
        self.canary = "sk-GLOBALCANARY-" + secrets.token_hex(12)  # OPENAI_API_KEY, bound by OPENAI_API_BASE
        self.anthropic_canary = "sk-ant-GLOBALCANARY-" + secrets.token_hex(12)  # ANTHROPIC_API_KEY, no base set
        self.canaries = (self.canary, self.anthropic_canary)
        self.allowed_hosts = tuple(allowed_hosts)
        self.redis_url = redis_url
        self.database_url = processes_database_url()
        self.extra_env = dict(extra_env or {})
        self.log_dir = Path(tempfile.mkdtemp(prefix="eneo-system-"))
        self.services: list[Service] = []
        self.upstreams: list[FakeUpstream] = []
        self.failed = False
        self._clients: list[Any] = []

    # --- lifecycle ---------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if _inherited(k)}
        env.update({
            "DJANGO_SETTINGS_MODULE": "eneo_site.test_settings",
            "DATABASE_URL": self.database_url,
            "DB_POOL": "false",
            "CELERY_BROKER_URL": self.redis_url,
            "REDIS_URL": self.redis_url,  # test_settings takes the broker from REDIS_URL when set
            "RATE_LIMIT_REDIS_URL": self.redis_url,
            "TEST_CELERY_EAGER": "0",
            "TEST_LOG_LEVEL": "INFO",
            "CATALOG_REFRESH_SECONDS": str(CATALOG_REFRESH_SECONDS),
            "USAGE_FLUSH_SECONDS": str(USAGE_FLUSH_SECONDS),
            "GATEWAY_TIMEOUT": "5",
            "GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS),  # a killed worker's concurrency slots come back this fast
            "PROVIDER_TEST_TIMEOUT": "2",
            "PROVIDER_DISCOVERY_TIMEOUT": "2",
            "HEALTH_CHECK_TIMEOUT": "2",
            "CHECK_RETRY_BACKOFF": "0.2",
            "TENANT_CREDENTIALS_ENABLED": "false",
            "ENDPOINT_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "OPENAI_API_KEY": self.canary,
            "OPENAI_API_BASE": self.upstream.url + "/v1",
            "ANTHROPIC_API_KEY": self.anthropic_canary,  # bound to Anthropic's own endpoint: no test may use it
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self) -> "Topology":
        try:
            self.upstream = self._fake("127.0.0.1")
            self.attacker = self._fake("127.0.0.2")
            self.outsider = self._fake("127.0.0.3")
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.rest_url = self.url + "/api/v1"
            self._prepare_schedules()
            env, py = self.env(), sys.executable
            self.web = self._service("web", [py, "-m", "uvicorn", "eneo_site.asgi:application", "--host", "127.0.0.1",
                                             "--port", str(self.port), "--workers", "2", "--no-access-log",
                                             "--lifespan", "off", "--log-level", "info"], env)
            self.worker = self._service("worker", [py, "-m", "celery", "-A", "eneo_site", "worker", "--pool", "threads",
                                                   "--concurrency", "4", "--without-gossip", "--without-mingle",
                                                   "--without-heartbeat", "-n", f"system-{os.getpid()}@%h",
                                                   "--loglevel", "INFO"], env)
            self.beat = self._service("beat", [py, "-m", "celery", "-A", "eneo_site", "beat", "-S",
                                               "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
                                               "--pidfile", "", "--loglevel", "INFO"], env)
            self._wait_ready()
        except BaseException:
            self.failed = True
            self.stop()
            raise
        return self

    def _fake(self, host: str) -> FakeUpstream:
        up = start_fake_upstream(host=host)
        self.upstreams.append(up)
        return up

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        service = Service(name, argv, env, self.log_dir)
        self.services.append(service)
        return service

    def _prepare_schedules(self) -> None:
        """No schedule of the migrations runs during the tests; the beat change marker exists (beat compares
        against it: without one, it misses the first change)."""
        from django_celery_beat.models import PeriodicTask, PeriodicTasks

        for task in PeriodicTask.objects.filter(enabled=True):
            task.enabled = False
            task.save(update_fields=["enabled"])
        PeriodicTasks.update_changed()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = {"web", "worker", "beat"}
        while pending:
            for service in self.services:
                if not service.running:
                    raise RuntimeError(f"the {service.name} process exited during start-up\n{self.log_tails()}")
            if "web" in pending and self.web.count("Started server process") >= 2:
                try:
                    if httpx.get(self.url + "/v1/models", timeout=2).status_code == 401:
                        pending.discard("web")
                except httpx.HTTPError:
                    pass
            if "worker" in pending and " ready." in self.worker.text():
                pending.discard("worker")
            if "beat" in pending and "beat: Starting..." in self.beat.text():
                pending.discard("beat")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {STARTUP_TIMEOUT:g} s: {sorted(pending)}\n{self.log_tails()}")
            time.sleep(0.1)

    def stop(self) -> None:
        for service in self.services:  # all at once, then wait for each
            service.terminate()
        for service in self.services:
            service.stop()
        for up in self.upstreams:
            up.stop()
        if self.failed or os.environ.get("KEEP_SYSTEM_LOGS") == "1":
            print(f"\nsystem test logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for service in self.services:
            state = "running" if service.running else f"exited {service.proc.returncode}"
            parts.append(f"----- {service.name} ({state}), {service.log_path} -----\n{service.tail(lines)}")
        return "\n".join(parts)

    # --- per test ----------------------------------------------------------------------------------------

    def begin_test(self, settings) -> None:
        """Before a test (transactional database): the test process's settings (pytest-django's `settings`
        fixture) mirror the processes', so that services called here decide as the servers would; the fake
        upstreams forget earlier requests and faults."""
        from django_celery_beat.models import PeriodicTasks

        env = self.env()
        settings.ENDPOINT_ALLOWED_HOSTS = [h for h in env["ENDPOINT_ALLOWED_HOSTS"].split(",") if h]
        settings.TENANT_CREDENTIALS_ENABLED = env["TENANT_CREDENTIALS_ENABLED"].lower() in ("1", "true", "yes", "on")
        for up in self.upstreams:
            up.reset()
        PeriodicTasks.update_changed()  # the flush after the last test removed the marker (see _prepare_schedules)

    def end_test(self) -> None:
        """Let work still in flight end before pytest-django flushes the database (a worker or a web process
        writing during the TRUNCATE can deadlock it): checks being run or retried, the web workers' catalog
        reloads after the test's last write (a reload reads table after table while TRUNCATE locks them one by
        one), and the gateway's usage records, which it writes in batches every USAGE_FLUSH_SECONDS."""
        from providers.models import ProviderCheck

        used_gateway = any(not isinstance(client, httpx.Client) for client in self._clients)
        for client in self._clients:
            client.close()
        self._clients.clear()
        deadline = time.monotonic() + 10
        while ProviderCheck.objects.exclude(state=ProviderCheck.State.DONE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.settle()
        if used_gateway:
            time.sleep(USAGE_FLUSH_SECONDS + 0.1)
        for up in self.upstreams:
            up.reset()

    # --- data, through the project's services (in the test process) --------------------------------------

    def tenant(self, slug: str | None = None):
        from tenants.actors import SYSTEM
        from tenants.services import tenant_create

        slug = slug or f"t-{uuid.uuid4().hex[:10]}"
        return tenant_create(actor=SYSTEM, name=slug.replace("-", " ").title(), slug=slug)

    def api_key(self, tenant, *scopes: str) -> str:
        """A tenant API key with these scopes (tenants.scopes.Scope values, or '*'); returns its plaintext."""
        from tenants.actors import SYSTEM
        from tenants.api_keys import api_key_create

        return api_key_create(actor=SYSTEM, tenant=tenant, name="system test",
                              scopes=[str(s) for s in scopes]).plaintext

    def instance_provider(self, *, name: str = "Shared OpenAI", provider_type: str = "openai",
                          base_url: str | None = None, api_key: str | None = None,
                          models: tuple[str, ...] = ("gpt-4o-mini",), enable_for: tuple = ()):
        """An instance-level provider a sysadmin configured (default: the legitimate upstream, no key of its own,
        so the global key applies), with its models enabled for the tenants in `enable_for`."""
        from providers.services import model_set_tenant_enabled, provider_create
        from tenants.actors import SYSTEM

        provider = provider_create(actor=SYSTEM, tenant=None, name=name, provider_type=provider_type,
                                   base_url=self.upstream.url + "/v1" if base_url is None else base_url,
                                   api_key=api_key, models=[{"model_id": m} for m in models])
        for tenant in enable_for:
            for model in provider.models.all():
                model_set_tenant_enabled(actor=SYSTEM, model=model, tenant=tenant, enabled=True)
        return provider

    def tenant_provider(self, tenant, *, name: str = "Own", provider_type: str = "openai", base_url: str,
                        api_key: str | None = None, models: tuple[str, ...] = ("tenant-gpt",)):
        from providers.services import provider_create
        from tenants.actors import SYSTEM

        return provider_create(actor=SYSTEM, tenant=tenant, name=name, provider_type=provider_type,
                               base_url=base_url, api_key=api_key, models=[{"model_id": m} for m in models])

    # --- acting from outside -----------------------------------------------------------------------------

    def openai(self, api_key: str):
        import openai

        client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=20)
        self._clients.append(client)
        return client

    def rest(self, api_key: str) -> httpx.Client:
        client = httpx.Client(base_url=self.rest_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=20)
        self._clients.append(client)
        return client

    def settle(self) -> None:
        """Wait until every web worker's catalog sees the data written so far (CATALOG_REFRESH_SECONDS)."""
        time.sleep(CATALOG_REFRESH_SECONDS + 0.15)

    def wait_task(self, rest: httpx.Client, task_id: str, *, timeout: float = 20.0, stable: float = 0.5) -> dict:
        """GET /api/v1/tasks/{id} until the check is done and stays done for `stable` s (no retry follows)."""
        return self.wait_tasks(rest, [task_id], timeout=timeout, stable=stable)[0]

    def wait_tasks(self, rest: httpx.Client, task_ids: list[str], *, timeout: float = 20.0,
                   stable: float = 0.5) -> list[dict]:
        """wait_task for several checks at once; their outcomes in the same order."""
        deadline = time.monotonic() + timeout
        done_since: dict[str, float] = {}
        seen: dict[str, tuple] = {}
        latest: dict[str, dict] = {}
        while True:
            now = time.monotonic()
            for task_id in task_ids:
                response = rest.get(f"/tasks/{task_id}")
                assert response.status_code == 200, response.text
                data = latest[task_id] = response.json()
                outcome = (data["state"], data["ok"], data["message"], data.get("finished_at"))
                if data["state"] != "done" or seen.get(task_id) != outcome:
                    done_since.pop(task_id, None)
                if data["state"] == "done":
                    done_since.setdefault(task_id, now)
                seen[task_id] = outcome
            if all(t in done_since and now - done_since[t] >= stable for t in task_ids):
                return [latest[t] for t in task_ids]
            if now > deadline:
                raise AssertionError(f"checks not done within {timeout:g} s; last answers: {list(latest.values())}")
            time.sleep(0.1)

    def post_check(self, rest: httpx.Client, path: str) -> str:
        """POST a check (/ai-providers/{id}/test, /discover, .../validate): 202 with a task; returns its id."""
        response = rest.post(path)
        assert response.status_code == 202, response.text
        return response.json()["task_id"]

    def start_check(self, rest: httpx.Client, path: str) -> dict:
        """POST a check and wait for its outcome (see wait_task)."""
        return self.wait_task(rest, self.post_check(rest, path))

    def run_health_checks(self, *, watch: list, runs: int = 2, timeout: float = 30.0) -> None:
        """Let beat schedule the health checks (every second) until each provider in `watch` got `runs` more health
        check rows; then remove the schedule again and wait until beat has noticed and every run it sent is done.

        Each run beat sends checks every active provider in one batch and stores one row per provider, so the
        providers in `watch` tell when the runs are done."""
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        from providers.models import ProviderCheck

        def rows() -> dict[int, int]:
            return {p.pk: ProviderCheck.objects.filter(provider_id=p.pk, kind=ProviderCheck.Kind.HEALTH).count()
                    - before.get(p.pk, 0) for p in watch}

        before: dict[int, int] = {}
        before = rows()
        reloads = self.beat.count(SCHEDULE_CHANGED)
        every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        task = PeriodicTask.objects.create(name=f"system tests: health checks {uuid.uuid4().hex[:8]}",
                                           task="providers.tasks.health_checks_run", interval=every_second)
        sent = f"Sending due task {task.name} "
        try:
            self._until_beat_reloads(reloads)
            self.wait_for(lambda: all(n >= runs for n in rows().values()), timeout=timeout,
                          what=f"{runs} scheduled health checks of providers {sorted(before)}")
        finally:
            reloads = self.beat.count(SCHEDULE_CHANGED)
            task.delete()
            self._until_beat_reloads(reloads)
        total = self.beat.count(sent)
        self.wait_for(lambda: all(n >= total for n in rows().values()), timeout=10,
                      what=f"the last of the {total} health check runs beat sent")

    def _until_beat_reloads(self, reloads: int, timeout: float = 10.0) -> None:
        """Wait for beat to reload its schedule. Beat reloads when the change marker moves past the one it saw
        last; if it had seen none (the marker row was flushed), it only notes this one, so poke it again."""
        from django_celery_beat.models import PeriodicTasks

        deadline = poked = time.monotonic()
        deadline += timeout
        while self.beat.count(SCHEDULE_CHANGED) <= reloads:
            now = time.monotonic()
            if not self.beat.running:
                raise AssertionError(f"beat exited\n{self.log_tails()}")
            if now > deadline:
                raise AssertionError(f"beat did not reload its schedule within {timeout:g} s\n{self.log_tails()}")
            if now - poked > 1.5:
                PeriodicTasks.update_changed()
                poked = now
            time.sleep(0.1)

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.1,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not met within {timeout:g} s\n{self.log_tails()}")
            time.sleep(interval)


# --- assertions on answers and on what reached the fake upstreams -------------------------------------------

def openai_error(exc) -> dict:
    """The JSON body of an openai.APIStatusError ({"error": {...}})."""
    try:
        return exc.response.json()
    except ValueError:
        raise AssertionError(f"error answer is not JSON: HTTP {exc.status_code} {exc.response.text[:300]}") from None


def assert_openai_error_shape(body: dict) -> dict:
    """OpenAI's error shape: {"error": {"message": str, "type": str, "param": ..., "code": ...}}; returns the inner."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    return error


def field_errors(response: httpx.Response) -> dict[str, str]:
    """REST 422 {"detail": [{"loc": [...], "msg": ...}]} -> {last loc element: msg}."""
    detail = response.json().get("detail")
    assert isinstance(detail, list), response.text
    return {str(e["loc"][-1]): e["msg"] for e in detail}


def requests_carrying(up: FakeUpstream, secret: str) -> list[dict]:
    """Requests that reached `up` with `secret` anywhere: key, any header, path, query or body."""
    import json

    hits = []
    for rec in up.requests:
        blob = json.dumps({"key": rec["key"], "headers": rec["headers"], "path": rec["path"], "query": rec["query"],
                           "json": rec["json"]})
        if secret in blob:
            hits.append(rec)
    return hits


def summary(up: FakeUpstream) -> list[str]:
    """What reached `up`, one line per request, keys masked: for assertion messages."""
    def masked(key):
        return None if key is None else f"...{key[-4:]}"

    def model(body):
        return body.get("model") if isinstance(body, dict) else None

    return [f"{r['method']} {r['path']} key={masked(r['key'])} model={model(r['json'])}" for r in up.requests]
