"""Key guessing: after AUTH_FAILURE_LIMIT failed authentications from one address within the window, that address
gets 429 with Retry-After (valid key or not) on /v1, the REST API and the sysadmin API; other addresses are not
affected; X-Forwarded-For counts only behind our TLS proxy; counts are shared across processes through Redis."""
import asyncio
import time

import httpx
import pytest

from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.throttle import AuthThrottle, auth_throttle, client_address, throttle_key

from .conftest import _free_port

LIMIT = 3
BAD = "eneo_000000000000_not-a-real-key-at-all-0000000000000"


@pytest.fixture(autouse=True)
def throttle(settings):
    settings.AUTH_FAILURE_LIMIT = LIMIT
    settings.AUTH_FAILURE_WINDOW_SECONDS = 60
    auth_throttle.clear()
    yield auth_throttle
    auth_throttle.clear()


def from_address(address: str, **kwargs) -> httpx.Client:
    """An HTTP client whose connections come from `address` (any 127.x.y.z is this host's loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=15, **kwargs)


def assert_locked_v1(response):
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 60
    error = response.json()["error"]
    assert error == {"message": error["message"], "type": "rate_limit_error", "param": None,
                     "code": "too_many_auth_failures"}
    assert "Too many failed authentication attempts" in error["message"]


def assert_locked_rest(response):
    assert response.status_code == 429, response.content
    assert 0 < int(response["Retry-After"]) <= 60
    assert set(response.json()) == {"detail"} and "Too many failed authentication" in response.json()["detail"]


def test_v1_key_guessing_locks_out_the_address_not_others(gateway, tenant):
    valid = api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext
    url = gateway.url + "/v1/models"
    with from_address("127.0.0.2") as attacker, from_address("127.0.0.1") as neighbour:
        assert attacker.get(url, headers={"Authorization": f"Bearer {valid}"}).status_code == 200
        for _ in range(5):  # requests without a key are not guesses
            assert attacker.get(url).status_code == 401
        for _ in range(LIMIT):
            assert attacker.get(url, headers={"Authorization": f"Bearer {BAD}"}).status_code == 401
        assert_locked_v1(attacker.get(url, headers={"Authorization": f"Bearer {BAD}"}))
        assert_locked_v1(attacker.get(url, headers={"Authorization": f"Bearer {valid}"}))  # no key check at all
        assert_locked_v1(attacker.post(gateway.url + "/v1/chat/completions", headers={"api-key": valid},
                                       json={"model": "x", "messages": []}))
        # another address: its own count, unaffected
        assert neighbour.get(url, headers={"Authorization": f"Bearer {valid}"}).status_code == 200
        assert neighbour.get(url, headers={"Authorization": f"Bearer {BAD}"}).status_code == 401


def test_v1_forwarded_for_does_not_pick_the_counted_address(gateway):
    url = gateway.url + "/v1/models"
    with from_address("127.0.0.2") as attacker:
        for i in range(LIMIT):
            r = attacker.get(url, headers={"Authorization": f"Bearer {BAD}", "X-Forwarded-For": f"203.0.113.{i}"})
            assert r.status_code == 401
        assert_locked_v1(attacker.get(url, headers={"Authorization": f"Bearer {BAD}",
                                                    "X-Forwarded-For": "203.0.113.99"}))


def test_rest_tenant_key_guessing_is_locked_out_per_address(client, tenant):
    valid = api_key_create(actor=SYSTEM, tenant=tenant, name="ops", scopes=["*"]).plaintext
    url = "/api/v1/ai-providers"
    attacker = {"REMOTE_ADDR": "198.51.100.7"}
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {valid}", **attacker).status_code == 200
    for _ in range(LIMIT):
        assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", **attacker).status_code == 401
    assert_locked_rest(client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", **attacker))
    assert_locked_rest(client.get(url, HTTP_AUTHORIZATION=f"Bearer {valid}", **attacker))
    assert_locked_rest(client.get(url, HTTP_X_API_KEY=valid, **attacker))
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {valid}", REMOTE_ADDR="198.51.100.8").status_code == 200
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", REMOTE_ADDR="198.51.100.8").status_code == 401


def test_sysadmin_key_guessing_is_locked_out_per_address(client, tenant, super_headers):
    url = f"/api/v1/sysadmin/tenants/{tenant.pk}/credentials"
    attacker = {"REMOTE_ADDR": "198.51.100.9"}
    assert client.get(url, **super_headers, **attacker).status_code == 200
    for i in range(LIMIT):
        assert client.get(url, HTTP_X_API_KEY=f"guess-{i:020d}", **attacker).status_code == 401
    assert_locked_rest(client.get(url, HTTP_X_API_KEY="guess-again-000000000", **attacker))
    assert_locked_rest(client.get(url, **super_headers, **attacker))  # the right key: still 429
    assert client.get(url, **super_headers, REMOTE_ADDR="198.51.100.10").status_code == 200


def test_one_request_counts_once_and_missing_keys_do_not_count(client, db):
    url = "/api/v1/ai-providers"
    for _ in range(10):
        assert client.get(url, REMOTE_ADDR="198.51.100.11").status_code == 401  # no key: not a guess
    for _ in range(LIMIT - 1):  # a bad key in both headers: one failure per request, not two
        r = client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", HTTP_X_API_KEY=BAD, REMOTE_ADDR="198.51.100.11")
        assert r.status_code == 401
    assert client.get(url, HTTP_X_API_KEY=BAD, REMOTE_ADDR="198.51.100.11").status_code == 401
    assert_locked_rest(client.get(url, HTTP_X_API_KEY=BAD, REMOTE_ADDR="198.51.100.11"))


def test_forwarded_for_is_trusted_only_behind_the_tls_proxy(client, db, settings):
    url = "/api/v1/ai-providers"
    settings.BEHIND_TLS_PROXY = False
    for i in range(LIMIT):  # a new X-Forwarded-For on each guess does not make a new address
        r = client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", REMOTE_ADDR="198.51.100.20",
                       HTTP_X_FORWARDED_FOR=f"203.0.113.{i}")
        assert r.status_code == 401
    assert_locked_rest(client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", REMOTE_ADDR="198.51.100.20",
                                  HTTP_X_FORWARDED_FOR="203.0.113.50"))

    settings.BEHIND_TLS_PROXY = True  # every request now comes from the proxy (10.0.0.1), which appends the client
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    for i in range(LIMIT):  # what the client itself sends (the left part) is not believed
        r = client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", HTTP_X_FORWARDED_FOR=f"1.2.3.{i}, 203.0.113.5",
                       **proxy)
        assert r.status_code == 401
    assert_locked_rest(client.get(url, HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy))
    assert_locked_rest(client.get(url, HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.5", **proxy))
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {BAD}", HTTP_X_FORWARDED_FOR="203.0.113.6",
                      **proxy).status_code == 401  # another client behind the same proxy


def test_admin_login_lockout_uses_the_same_client_address(rf, settings):
    from axes.helpers import get_client_ip_address

    request = rf.post("/admin/login/", REMOTE_ADDR="198.51.100.30", HTTP_X_FORWARDED_FOR="203.0.113.9")
    settings.BEHIND_TLS_PROXY = False
    assert get_client_ip_address(request) == client_address(request) == "198.51.100.30"
    settings.BEHIND_TLS_PROXY = True
    assert get_client_ip_address(request) == "203.0.113.9"


def test_ipv6_counts_per_64_network():
    assert throttle_key("2001:db8:1:2::1") == throttle_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert throttle_key("2001:db8:1:3::1") != throttle_key("2001:db8:1:2::1")
    assert throttle_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert throttle_key("192.0.2.1") == "192.0.2.1"


def test_counts_are_shared_across_processes_through_redis(redis_url):
    """Two throttles with their own memory and Redis clients (two worker processes): failures recorded by either
    count for both, through the sync (REST) and async (/v1) paths alike."""
    first, second, third = AuthThrottle(redis_url), AuthThrottle(redis_url), AuthThrottle(redis_url)
    first.clear()
    address = "192.0.2.44"
    assert first.record_failure(address) == 0
    assert asyncio.run(second.arecord_failure(address)) == 0
    assert second.retry_after(address) == 0 and first.retry_after(address) == 0
    assert first.record_failure(address) == 60  # the third failure, counted across both: locked out
    import time

    from tenants.throttle import CLEAR_CACHE_SECONDS

    time.sleep(CLEAR_CACHE_SECONDS)  # `second` reuses its "not locked out" answer for at most this long
    assert 0 < second.retry_after(address) <= 60
    assert 0 < asyncio.run(third.aretry_after(address)) <= 60
    assert first.local.retry_after(throttle_key(address)) == 0  # it really is in Redis, not in process memory
    assert third.retry_after("192.0.2.45") == 0
    first.clear()


def test_lockout_ends_when_the_window_has_passed(redis_url, settings):
    settings.AUTH_FAILURE_WINDOW_SECONDS = 1
    for url in (redis_url, ""):
        throttle = AuthThrottle(url)
        throttle.clear()
        for _ in range(LIMIT - 1):
            assert throttle.record_failure("192.0.2.50") == 0
        assert throttle.record_failure("192.0.2.50") == 1
        assert throttle.retry_after("192.0.2.50") == 1
        time.sleep(1.2)
        assert throttle.retry_after("192.0.2.50") == 0
        assert throttle.record_failure("192.0.2.50") == 0  # a fresh count after the lockout
        throttle.clear()


def test_gateway_and_rest_share_counts_through_redis(gateway, client, redis_url, settings):
    settings.RATE_LIMIT_REDIS_URL = redis_url
    auth_throttle.clear()
    for _ in range(LIMIT - 1):
        assert client.get("/api/v1/ai-providers", HTTP_AUTHORIZATION=f"Bearer {BAD}",
                          REMOTE_ADDR="127.0.0.2").status_code == 401
    with from_address("127.0.0.2") as attacker:
        r = attacker.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {BAD}"})
        assert r.status_code == 401
        assert_locked_v1(attacker.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {BAD}"}))
    assert 0 < AuthThrottle(redis_url).retry_after("127.0.0.2") <= 60  # what another worker process sees
    assert_locked_rest(client.get("/api/v1/ai-providers", REMOTE_ADDR="127.0.0.2"))


def test_redis_down_falls_back_to_counting_in_process(settings):
    settings.RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    throttle = AuthThrottle()
    for _ in range(LIMIT - 1):
        assert throttle.record_failure("192.0.2.60") == 0
    assert asyncio.run(throttle.arecord_failure("192.0.2.60")) == 60
    assert throttle.retry_after("192.0.2.60") > 0 and asyncio.run(throttle.aretry_after("192.0.2.60")) > 0


def test_limit_zero_turns_the_throttle_off(client, db, settings):
    settings.AUTH_FAILURE_LIMIT = 0
    for _ in range(LIMIT + 2):
        assert client.get("/api/v1/ai-providers", HTTP_AUTHORIZATION=f"Bearer {BAD}",
                          REMOTE_ADDR="198.51.100.40").status_code == 401


def test_quickstart_runs_uvicorn_without_proxy_headers_unless_behind_the_proxy(settings):
    from eneo_site.quickstart import uvicorn_args

    settings.BEHIND_TLS_PROXY = False
    assert "--no-proxy-headers" in uvicorn_args("127.0.0.1", "8000")
    settings.BEHIND_TLS_PROXY = True
    assert "--no-proxy-headers" not in uvicorn_args("127.0.0.1", "8000")
