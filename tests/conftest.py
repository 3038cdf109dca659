import logging
import os

import pytest
from django.conf import settings
from django.db import connection

CANARY = "sk-CANARY-7f3a9c1e5b2d4f6a8c0e-zz91"


def pytest_configure(config):
    # In CI (REQUIRE_SERVICES=1) the suite must run on PostgreSQL, never silently on SQLite.
    if os.environ.get("REQUIRE_SERVICES") == "1" and "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but DATABASE_URL is not a PostgreSQL URL")


def pytest_collection_modifyitems(session, config, items):
    """The system tests (tests/system) run last. Their topology (web workers, a Celery worker and beat on the test
    database) lives until the session ends; tests after them would have their data probed by its beat and worker."""
    items.sort(key=lambda item: "system" in item.path.parent.parts[-1:])


# Modules whose gateway tests run on both lanes of the gateway (GATEWAY_LEAN_LANE on and off): each of their tests
# that uses the live gateway runs twice, [lean] and [litellm] (tests/test_lean_lane.py picks its lanes per test).
LANE_MODULES = frozenset({"test_gateway", "test_openai_spec", "test_egress", "test_usage_ledger", "test_v1_endpoints",
                          "test_breaker", "test_limits", "test_provider_settings"})


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rsplit(".", 1)[-1] in LANE_MODULES and "gateway" in metafunc.fixturenames:
        metafunc.parametrize("lane", ["lean", "litellm"], indirect=True)


@pytest.fixture(autouse=True)
def lane(request):
    """The gateway lane a test runs on (LANE_MODULES: both, one after the other); None: the configured default.
    The setting is read per call, so nothing needs invalidating."""
    mode = getattr(request, "param", None)
    if mode is None:
        yield None
        return
    from django.test import override_settings

    with override_settings(GATEWAY_LEAN_LANE=mode == "lean"):
        yield mode


@pytest.fixture(autouse=True)
def _no_global_keys(monkeypatch):
    """Global provider keys from the developer's environment must not leak into tests."""
    for name in list(os.environ):
        if name.endswith("_API_KEY") or name in {"VLLM_MODEL_URL", "AZURE_API_BASE", "AZURE_ENDPOINT", "OPENAI_API_BASE"}:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tenant(db):
    from tenants.actors import SYSTEM
    from tenants.services import tenant_create

    return tenant_create(actor=SYSTEM, name="Acme Municipality", slug="acme")


@pytest.fixture
def other_tenant(db):
    from tenants.actors import SYSTEM
    from tenants.services import tenant_create

    return tenant_create(actor=SYSTEM, name="Other Region", slug="other")


@pytest.fixture
def operator(db, django_user_model):
    return django_user_model.objects.create_superuser("operator", "op@example.org", "pw-operator-123")


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def super_headers():
    return {"HTTP_X_API_KEY": settings.SUPER_API_KEY}


@pytest.fixture
def all_logs():
    """Capture every log record at DEBUG, formatted through the project's masking filter."""
    from credentials.masking import SecretMaskingFilter

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.addFilter(SecretMaskingFilter())
    raw = []

    class Raw(logging.Handler):
        def emit(self, record):
            try:
                raw.append(record.getMessage())
            except Exception:
                raw.append(str(record.msg))

    raw_handler = Raw(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(raw_handler)  # first: sees records before any filter rewrites them
    root.addHandler(handler)
    yield {"masked": records, "raw": raw}
    root.removeHandler(handler)
    root.removeHandler(raw_handler)
    root.setLevel(old_level)


def dump_tables_text() -> str:
    """Every row of every table, as text (a 'full database dump')."""
    out = []
    with connection.cursor() as cur:
        for table in connection.introspection.table_names():
            cur.execute(f'SELECT * FROM "{table}"')
            out.extend(repr(row) for row in cur.fetchall())
    return "\n".join(out)


# --- Live servers: the fake upstream and our ASGI app under uvicorn -------------------------------------

@pytest.fixture(scope="session")
def fake_upstream_server():
    from tests.fake_upstream import start_fake_upstream

    up = start_fake_upstream()
    yield up
    up.stop()


@pytest.fixture
def upstream(fake_upstream_server):
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture(scope="session")
def attacker_server():
    """A server no key may ever reach: another fake upstream, on 127.0.0.2 (outside the test ENDPOINT_ALLOWED_HOSTS),
    recording every request that arrives."""
    from tests.fake_upstream import start_fake_upstream

    up = start_fake_upstream(host="127.0.0.2")
    yield up
    up.stop()


@pytest.fixture
def attacker(attacker_server):
    attacker_server.reset()
    yield attacker_server
    attacker_server.reset()


class LiveGateway:
    def __init__(self):
        import asyncio
        import threading

        import uvicorn

        from eneo_site.asgi import build_application
        from providers.gateway.core import Gateway

        self.gw = Gateway()  # this server's own catalog, limiter, breaker and usage writer
        self.config = uvicorn.Config(build_application(self.gw), host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                     access_log=False, proxy_headers=False)
        self.server = uvicorn.Server(self.config)
        self.loop = None
        started = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._serve(started))

        self.thread = threading.Thread(target=run, name="live-gateway", daemon=True)
        self.thread.start()
        assert started.wait(20), "gateway did not start"
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _serve(self, started):
        import asyncio

        config = self.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup()
        started.set()
        while not self.server.should_exit:
            await asyncio.sleep(0.05)
        await self.server.shutdown()

    def run_async(self, coro_factory, timeout=10):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro_factory(), self.loop).result(timeout)

    def flush_usage(self):
        self.run_async(self.gw.flush_usage)

    def stop(self):
        from asgiref.sync import sync_to_async
        from django.db import connections

        self.gw.catalog.close()  # its threads close their database connections
        try:
            self.run_async(lambda: sync_to_async(connections.close_all, thread_sensitive=True)())
        except Exception:  # noqa: BLE001
            pass
        try:  # LiteLLM's background logging task lives on this loop: end it before the loop does
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            self.run_async(GLOBAL_LOGGING_WORKER.stop)
        except Exception:  # noqa: BLE001
            pass
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def live_gateway(django_db_setup, django_db_blocker):
    server = LiveGateway()
    yield server
    server.stop()


@pytest.fixture
def gateway(live_gateway, transactional_db, settings):
    """Our gateway over real HTTP, seeing this test's committed data at once."""
    settings.CATALOG_REFRESH_SECONDS = 0
    live_gateway.gw.catalog.invalidate()
    yield live_gateway
    live_gateway.flush_usage()
    live_gateway.gw.catalog.invalidate()


def usage_rows(gateway, expected=1):
    """The usage records, once `expected` of them were written (a stream's is written as it ends, perhaps after
    the client read its last event)."""
    import time

    from providers.models import UsageRecord

    deadline = time.monotonic() + 5
    while True:
        gateway.flush_usage()
        rows = list(UsageRecord.objects.order_by("id"))
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def openai_client(gateway, api_key, **kwargs):
    import openai

    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=15, **kwargs)


# --- Redis, a real Celery worker and beat ----------------------------------------------------------------

def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require(what: str):
    """In CI (REQUIRE_SERVICES=1) a missing service fails the test; elsewhere it is skipped with the reason."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required in CI but not available")
    pytest.skip(f"{what} not available (install redis-server, or set REDIS_URL)")


@pytest.fixture(scope="session")
def redis_url():
    import shutil
    import subprocess
    import time

    import redis

    url = os.environ.get("REDIS_URL")
    proc = None
    if not url:
        binary = shutil.which("redis-server")
        if binary is None:
            _require("Redis")
        port = _free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(50):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        _require(f"Redis at {url}")
    yield url
    if proc is not None:
        proc.terminate()
        proc.wait(5)


def _test_database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class CeleryProcesses:
    """A real worker (and optionally beat) in subprocesses, on Redis, against the test database."""

    def __init__(self, redis_url, upstream_url):
        self.redis_url, self.procs = redis_url, []
        self.env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "eneo_site.test_settings", "DATABASE_URL": _test_database_url(),
            "CELERY_BROKER_URL": redis_url, "REDIS_URL": redis_url, "PROVIDER_TEST_TIMEOUT": "1.5",
            "HEALTH_CHECK_TIMEOUT": "1.5", "CHECK_RETRY_BACKOFF": "0.2", "DB_POOL": "false",
            "TEST_CELERY_EAGER": "0", "TEST_LOG_LEVEL": "INFO",
        }
        self.log = open(settings.VAR_DIR / "test-celery.log", "a")

    def start(self, *args):
        import subprocess
        import sys

        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "eneo_site", *args, "--loglevel", "INFO"],
                                cwd=settings.BASE_DIR, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001
                proc.kill()


@pytest.fixture(scope="session")
def celery_processes(redis_url, fake_upstream_server, django_db_setup, django_db_blocker):
    import time

    from eneo_site.celery import app

    procs = CeleryProcesses(redis_url, fake_upstream_server.url)
    worker = procs.start("worker", "--pool", "threads", "--concurrency", "4", "--without-gossip",
                         "--without-mingle", "--without-heartbeat", "-n", "test-worker@%h")
    previous = point_celery_at(redis_url, eager=False, transport_options={"socket_connect_timeout": 2})
    deadline = time.time() + 60
    while time.time() < deadline:
        if worker.poll() is not None:
            pytest.fail("the Celery worker exited; see var/test-celery.log")
        try:
            if app.control.inspect(timeout=1).ping():
                break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    else:
        pytest.fail("the Celery worker did not answer within 60 s; see var/test-celery.log")
    yield procs
    procs.stop()
    point_celery_at(*previous)


def point_celery_at(url, eager, transport_options):
    """Switch the test process's Celery app to another broker; returns the previous settings."""
    from eneo_site.celery import app

    from kombu import pools

    previous = (app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options)
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()  # kombu's registry would otherwise hand back the pool just closed (same broker): "closed pool"
    app.conf.broker_url, app.conf.task_always_eager = url, eager
    app.conf.broker_transport_options = transport_options
    return previous


@pytest.fixture
def worker(celery_processes, transactional_db, upstream):
    """A live worker processing this test's committed data."""
    return celery_processes


def wait_for(predicate, timeout=20.0, interval=0.1):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
