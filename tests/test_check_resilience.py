"""A check never stays queued or running forever.

Service level: checks still pending after CHECK_STALE_SECONDS are marked failed by the periodic task and whenever
they are read (REST, admin); fresh and finished ones are untouched; running a check again is safe.
Real topology: Celery workers in subprocesses on Redis, SIGKILLed in the middle of a check (the fake upstream holds
the call): a killed prefork child's check is redelivered at once (acks_late + reject_on_worker_lost); a whole
worker killed leaves its checks to another worker after the broker's visibility timeout, or to the stale limit.
"""
import importlib
import os
import signal
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from providers.checks.jobs import check_run, stale_message
from providers.models import ProviderCheck
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .conftest import CeleryProcesses, point_celery_at, wait_for
from .factories import make_model, make_provider

STALE = 600  # the default CHECK_STALE_SECONDS


def make_check(provider, *, state="queued", age=0, **fields):
    check = ProviderCheck.objects.create(provider=provider, kind="test", state=state, task_id=uuid.uuid4().hex,
                                         **fields)
    if age:
        ProviderCheck.objects.filter(pk=check.pk).update(created_at=timezone.now() - timedelta(seconds=age))
    check.refresh_from_db()
    return check


def assert_stale(check):
    check.refresh_from_db()
    assert (check.state, check.ok, check.status) == ("done", False, "unknown")
    assert check.message == stale_message(STALE) == (
        "The check did not finish within 600 s (its worker stopped?). Run it again.")
    assert check.finished_at is not None


def assert_untouched(check):
    before = (check.state, check.ok, check.status, check.message, check.finished_at)
    check.refresh_from_db()
    assert (check.state, check.ok, check.status, check.message, check.finished_at) == before


# --- service level -------------------------------------------------------------------------------------------

def test_settings_and_task_options(settings):
    from providers.tasks import check_run as check_run_task
    from providers.tasks import health_check_batch

    assert settings.CHECK_STALE_SECONDS == STALE
    for task in (check_run_task, health_check_batch):
        assert task.acks_late and task.reject_on_worker_lost


def test_periodic_task_marks_stale_checks_failed(db):
    from providers.tasks import check_expire_stale as check_expire_stale_task

    p = make_provider(name="Stuck")
    queued = make_check(p, state="queued", age=STALE + 5)
    running = make_check(p, state="running", age=STALE + 5)
    fresh_queued = make_check(p, state="queued", age=STALE - 30)
    fresh_running = make_check(p, state="running")
    done = make_check(p, state="done", age=STALE * 3, ok=True, status="healthy", message="Connection OK (m)",
                      finished_at=timezone.now() - timedelta(seconds=STALE * 3))
    assert check_expire_stale_task.delay().get() == 2
    assert_stale(queued)
    assert_stale(running)
    for check in (fresh_queued, fresh_running, done):
        assert_untouched(check)
    p.refresh_from_db()
    assert p.health_status == "unknown" and p.health_checked_at is None  # says nothing about the provider
    assert check_expire_stale_task.delay().get() == 0  # nothing left


def test_schedule_migration_creates_the_every_minute_task(db):
    from django.apps import apps
    from django_celery_beat.models import PeriodicTask

    migration = importlib.import_module("providers.migrations.0004_stale_check_schedule")
    PeriodicTask.objects.filter(name=migration.NAME).delete()  # a transactional test may have flushed it already
    migration.create(apps, None)
    migration.create(apps, None)  # idempotent: an existing entry is left as it is
    task = PeriodicTask.objects.get(task="providers.tasks.check_expire_stale")
    assert task.enabled and (task.interval.every, task.interval.period) == (1, "minutes")


def test_reading_a_stale_check_through_rest_shows_it_failed(db, tenant, client):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="ops", scopes=["aiProviders:GetAiProvider"]).plaintext
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    p = make_provider(tenant=tenant, name="Own", base_url="http://127.0.0.1:9/v1", api_key="sk-rest-stale-0001")
    stuck = make_check(p, state="running", age=STALE + 1, tenant=tenant)
    fresh = make_check(p, state="queued", tenant=tenant)
    done = make_check(p, state="done", age=STALE * 2, ok=False, status="down", message="Invalid API key")

    body = client.get(f"/api/v1/tasks/{stuck.task_id}", **headers).json()
    assert (body["state"], body["ok"], body["status"]) == ("done", False, "unknown")
    assert body["message"] == stale_message(STALE) and body["finished_at"]
    assert_stale(stuck)  # stored, not only rendered
    body = client.get(f"/api/v1/tasks/{fresh.task_id}", **headers).json()
    assert (body["state"], body["ok"]) == ("queued", None)
    body = client.get(f"/api/v1/tasks/{done.task_id}", **headers).json()
    assert (body["state"], body["ok"], body["message"]) == ("done", False, "Invalid API key")
    for check in (fresh, done):
        assert_untouched(check)


def test_admin_page_shows_stale_check_failed_and_stops_refreshing(admin_client):
    p = make_provider(name="Watched")
    stuck = make_check(p, state="queued", age=STALE + 1)
    page = admin_client.get(f"/admin/providers/provider/{p.pk}/change/").content.decode()
    assert stale_message(STALE) in page and 'http-equiv="refresh"' not in page
    assert_stale(stuck)
    fresh = make_check(p, state="running")
    page = admin_client.get(f"/admin/providers/provider/{p.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' in page  # a check still in its time keeps the page refreshing
    assert_untouched(fresh)


def test_running_a_check_again_is_safe(db, upstream):
    p = make_provider(name="Up", base_url=upstream.url + "/v1", api_key="sk-rerun-0001")
    make_model(p, model_id="gpt-4o-mini")

    done = make_check(p, state="done", ok=False, status="down", message="Invalid API key")
    assert check_run(done.pk) is None  # a redelivered message of a finished check
    assert_untouched(done)
    expired = make_check(p, state="queued", age=STALE + 1)
    assert check_run(expired.pk) is None  # picked up too late: marked stale, not run
    assert_stale(expired)
    assert upstream.requests == []

    lost = make_check(p, state="running", details={"attempt": 1})  # its worker died: run it again
    assert check_run(lost.pk).ok
    lost.refresh_from_db()
    assert lost.ok and lost.details["worker_lost"] == 1 and len(upstream.requests) == 1

    poison = make_check(p, state="running", details={"attempt": 1, "worker_lost": 2})
    assert check_run(poison.pk) is None  # a check that keeps killing its worker is given up
    poison.refresh_from_db()
    assert (poison.state, poison.ok, poison.details["worker_lost"]) == ("done", False, 3)
    assert poison.message == "The check was interrupted 3 times (its worker stopped each time); not run again."
    assert len(upstream.requests) == 1


# --- real topology: workers killed with SIGKILL in the middle of a check ---------------------------------------

class Workers:
    """Celery workers of our own, consuming a queue of their own (so a worker another test file started cannot
    take these checks), with the broker settings of eneo_site/settings.py (visibility timeout included)."""

    def __init__(self, redis_url, upstream_url):
        self.procs = CeleryProcesses(redis_url, upstream_url)
        # Without REDIS_URL, test_settings keeps settings.py's broker options (it would replace them otherwise).
        self.procs.env.pop("REDIS_URL")
        self.procs.env.update(CELERY_BROKER_URL=redis_url, PROVIDER_TEST_TIMEOUT="30")
        self.queue = f"resilience-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis_url = redis_url

    def start(self, name, *pool, visibility_timeout):
        from eneo_site.celery import app

        self.procs.env["CELERY_VISIBILITY_TIMEOUT"] = str(visibility_timeout)
        node = f"{name}-{self.queue}@resilience"
        proc = self.procs.start("worker", *pool, "-Q", self.queue, "-n", node, "--without-gossip",
                                "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", "1")

        def answers():
            if proc.poll() is not None:
                pytest.fail("a Celery worker exited; see var/test-celery.log")
            return app.control.ping(destination=[node], timeout=0.5)

        wait_for(answers, timeout=30)
        return proc

    def dispatch(self, check):
        from providers.tasks import check_run as check_run_task

        check_run_task.apply_async(args=[check.pk], task_id=check.task_id, queue=self.queue)

    def settled(self, *checks):
        """No message of these checks is left in the queue or taken but unacknowledged."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        pending = b"".join(client.hvals("unacked")) + b"".join(
            b"".join(client.lrange(key, 0, -1)) for key in client.keys(self.queue + "*"))
        return not any(c.task_id.encode() in pending for c in checks)

    def stop(self):
        import redis

        for proc in self.procs.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)  # cold shutdown: nothing of ours is left to finish
        self.procs.stop()
        self.procs.log.close()
        client = redis.Redis.from_url(self.redis_url)
        for key in client.scan_iter(f"*{self.queue}*"):  # the queue's bindings
            client.delete(key)


def repoint_celery(*args, **kwargs):
    from kombu import pools

    previous = point_celery_at(*args, **kwargs)
    pools.reset()  # kombu's registry would hand the pool point_celery_at just closed out again (same broker)
    return previous


@pytest.fixture
def workers(redis_url, upstream, transactional_db):
    previous = repoint_celery(redis_url, eager=False, transport_options={"socket_connect_timeout": 2})
    w = Workers(redis_url, upstream.url)
    yield w
    w.stop()
    repoint_celery(*previous)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def done(check):
    check.refresh_from_db()
    return check.state == "done"


def test_killed_prefork_child_check_is_redelivered_and_completes(workers, upstream):
    p = make_provider(name="Up", base_url=upstream.url + "/v1", api_key="sk-kill-child-0001")
    make_model(p, model_id="gpt-4o-mini")
    worker = workers.start("prefork", "--pool", "prefork", "--concurrency", "1", visibility_timeout=300)
    upstream.set_fault("slow", seconds=12, times=1)  # the first call hangs: the child is killed meanwhile
    check = make_check(p)
    workers.dispatch(check)
    wait_for(lambda: len(upstream.requests) == 1, timeout=20)
    check.refresh_from_db()
    assert check.state == "running"
    (child,) = children_of(worker.pid)
    os.kill(child, signal.SIGKILL)

    wait_for(lambda: done(check), timeout=20)  # requeued at once by the worker, run by a new child
    assert check.ok and check.message == "Connection OK (gpt-4o-mini)"
    assert check.details["worker_lost"] == 1 and len(upstream.requests) == 2
    assert worker.poll() is None  # the worker itself lived on


def test_killed_worker_checks_are_redelivered_or_expire_never_stuck(workers, upstream, tenant, client):
    key = api_key_create(actor=SYSTEM, tenant=tenant, name="ops", scopes=["aiProviders:GetAiProvider"]).plaintext
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    providers = [make_provider(tenant=tenant, name=f"Own {n}", base_url=upstream.url + "/v1",
                               api_key=f"sk-kill-worker-000{n}") for n in (1, 2)]
    for p in providers:
        make_model(p, model_id="gpt-4o-mini")
    first = workers.start("a", "--pool", "threads", "--concurrency", "2", visibility_timeout=300)
    upstream.set_fault("slow", seconds=12, times=2)
    redelivered, expired = (make_check(p, tenant=tenant) for p in providers)
    workers.dispatch(redelivered)
    workers.dispatch(expired)
    wait_for(lambda: len(upstream.requests) == 2, timeout=20)
    first.send_signal(signal.SIGKILL)  # the whole worker: nobody is left to requeue or finish anything
    first.wait(5)

    # No worker: a reader past the stale limit sees the check failed, not "running" forever.
    ProviderCheck.objects.filter(pk=expired.pk).update(created_at=timezone.now() - timedelta(seconds=STALE + 1))
    body = client.get(f"/api/v1/tasks/{expired.task_id}", **headers).json()
    assert (body["state"], body["ok"], body["message"]) == ("done", False, stale_message(STALE))
    assert client.get(f"/api/v1/tasks/{redelivered.task_id}", **headers).json()["state"] == "running"

    # A new worker gets both messages back once the visibility timeout (5 s here) has passed: the check still in
    # its time runs again and completes; the expired one is not run again. (A run longer than the visibility
    # timeout is handed out a second time, hence "at least once": in production the timeout exceeds any task.)
    workers.start("b", "--pool", "threads", "--concurrency", "2", visibility_timeout=5)
    wait_for(lambda: done(redelivered), timeout=25)
    assert redelivered.ok and redelivered.details["worker_lost"] >= 1
    wait_for(lambda: workers.settled(redelivered, expired), timeout=15)
    assert_stale(expired)
    assert "worker_lost" not in expired.details
    seen = upstream.keys_seen()
    assert seen.count("sk-kill-worker-0002") == 1 and seen.count("sk-kill-worker-0001") >= 2
