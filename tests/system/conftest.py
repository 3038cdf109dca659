"""Fixtures of the system tests: `topology` (the real processes, once per session; see topology.py) and `system`
(per test: the same Topology, with a transactional database so the processes see the test's data).

Without PostgreSQL or Redis the tests are skipped, and fail when REQUIRE_SERVICES=1 (CI).
"""
from __future__ import annotations

import os

import pytest
from django.conf import settings as django_settings

from tests.conftest import _require

from .topology import Topology, redis_url_with_db

_running: Topology | None = None


@pytest.fixture(scope="session")
def topology(redis_url, django_db_setup, django_db_blocker):
    global _running
    if "postgresql" not in django_settings.DATABASES["default"]["ENGINE"]:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            _require("PostgreSQL")  # fails
        pytest.skip("the system tests need PostgreSQL: set DATABASE_URL=postgres://...")
    url = redis_url_with_db(redis_url, int(os.environ.get("SYSTEM_TESTS_REDIS_DB", "9")))
    with django_db_blocker.unblock():
        topo = Topology(redis_url=url).start()
    _running = topo
    try:
        yield topo
    finally:
        _running = None
        topo.stop()


@pytest.fixture
def system(topology, transactional_db, settings):
    """The topology, for a test whose data (written through services here) the processes see at once."""
    topology.begin_test(settings)
    yield topology
    topology.end_test()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running is not None and "topology" in item.fixturenames:
        _running.failed = True  # keep the log files
        report.sections.append(("system topology: process log tails", _running.log_tails()))
