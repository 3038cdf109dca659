"""The fake upstream features the system tests rely on: other loopback addresses and the redirect fault."""
from __future__ import annotations

import httpx
import pytest

from tests.fake_upstream import start_fake_upstream

KEY = {"Authorization": "Bearer sk-modes-0001"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_servers_on_other_loopback_addresses_record_only_their_own_requests():
    with start_fake_upstream(host="127.0.0.2") as two, start_fake_upstream(host="127.0.0.3") as three:
        assert two.url.startswith("http://127.0.0.2:") and three.url.startswith("http://127.0.0.3:")
        assert httpx.post(two.url + "/v1/chat/completions", json=CHAT, headers=KEY).status_code == 200
        assert [(r["path"], r["key"]) for r in two.requests] == [("/v1/chat/completions", "sk-modes-0001")]
        assert three.requests == []


def test_redirect_fault():
    with start_fake_upstream() as up, start_fake_upstream(host="127.0.0.2") as target:
        up.set_fault("redirect", location=target.url + "/v1/chat/completions", path_contains="/chat/", times=1)
        r = httpx.post(up.url + "/v1/chat/completions", json=CHAT, headers=KEY)
        assert r.status_code == 307 and r.headers["location"] == target.url + "/v1/chat/completions"
        assert target.requests == [] and len(up.requests) == 1  # recorded where it was answered
        assert httpx.post(up.url + "/v1/chat/completions", json=CHAT, headers=KEY).status_code == 200  # used up

        up.set_fault("redirect", location=target.url, append_path=True, status=308)
        r = httpx.get(up.url + "/v1/models?x=1", headers=KEY)
        assert r.status_code == 308 and r.headers["location"] == target.url + "/v1/models?x=1"
        followed = httpx.get(up.url + "/v1/models", headers=KEY, follow_redirects=True)
        # httpx drops Authorization on a redirect to another origin: the target sees the request, not the key
        assert followed.status_code == 401
        assert [(r["path"], r["key"]) for r in target.requests] == [("/v1/models", None)]

        control = httpx.post(up.url + "/__control/fault", json={"mode": "redirect", "location": target.url})
        assert control.status_code == 200 and control.json()["fault"]["opts"] == {"location": target.url}


@pytest.mark.parametrize("opts", [{}, {"location": ""}, {"location": "http://x", "status": 200}])
def test_redirect_fault_validation(opts):
    with start_fake_upstream() as up:
        with pytest.raises(ValueError):
            up.set_fault("redirect", **opts)
        assert httpx.post(up.url + "/__control/fault", json={"mode": "redirect", **opts}).status_code == 400
