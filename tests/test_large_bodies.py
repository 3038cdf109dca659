"""Large bodies do not hold up other requests (issue 10, item 6): a bounded number of messages, and bodies above
GATEWAY_PARSE_IN_THREAD_BYTES parsed off the event loop."""
import json
import threading

import httpx
import pytest

from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create

from .factories import make_model, make_provider


@pytest.fixture
def key(gateway, upstream, tenant):
    p = make_provider(tenant=None, instance_wide=True, base_url=upstream.url + "/v1")
    make_model(p, model_id="gpt-4o-mini", alias="fast", instance_wide=True)
    return api_key_create(actor=SYSTEM, tenant=tenant, name="bot", scopes=["gateway:Use"]).plaintext


def post(gateway, key, body):
    return httpx.post(gateway.url + "/v1/chat/completions", content=json.dumps(body).encode(), timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def test_too_many_messages_is_400_naming_the_field(gateway, upstream, key, settings):
    settings.GATEWAY_MAX_MESSAGES = 100
    big = {"model": "fast", "messages": [{"role": "user", "content": "x" * 40}] * 20_000}  # ~1 MB
    small = {"model": "fast", "messages": [{"role": "user", "content": "x"}] * 101}  # below the thread threshold
    for body in (big, small):
        r = post(gateway, key, body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "messages" and "at most 100" in error["message"]
    assert upstream.requests == []
    assert post(gateway, key, {"model": "fast", "messages": [{"role": "user", "content": "x"}] * 100}).status_code == 200


def test_large_bodies_are_parsed_off_the_event_loop(gateway, upstream, key, settings, monkeypatch):
    from tenants.parsers import JsonParser

    threads = []
    original = JsonParser.parse_body

    def spy(self, request):
        threads.append(threading.current_thread().name)
        return original(self, request)

    monkeypatch.setattr(JsonParser, "parse_body", spy)
    settings.GATEWAY_PARSE_IN_THREAD_BYTES = 100_000
    large = {"model": "fast", "messages": [{"role": "user", "content": "y" * 200_000}]}
    assert post(gateway, key, large).status_code == 200
    assert post(gateway, key, {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert threads[0] != "live-gateway" and threads[-1] == "live-gateway", threads
    assert upstream.requests[0]["json"]["messages"][0]["content"] == "y" * 200_000
