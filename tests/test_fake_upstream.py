"""Tests of the fake LLM upstream itself (plain httpx), and that LiteLLM really talks to it."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported (lazily, below)

from tests.fake_upstream import REPLY, FakeUpstream, UpstreamState, extract_key, start_fake_upstream  # noqa: E402
from tests.openai_spec import violations  # noqa: E402

OPENAI_KEY = {"Authorization": "Bearer sk-test-123456"}
AZURE_KEY = {"api-key": "az-key-123456"}
ANTHROPIC = {"x-api-key": "ant-key-123456", "anthropic-version": "2023-06-01"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]}
CLAUDE = {"model": "claude-3-5-sonnet-20240620", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with start_fake_upstream() as up:
        yield up


@pytest.fixture
def up(server: FakeUpstream) -> Iterator[FakeUpstream]:
    server.reset()
    server.set_models(["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"])
    server.set_latency(0, spread_stream=False)
    yield server
    server.reset()


@pytest.fixture
def http(up: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=5) as client:
        yield client


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event"), fields["data"]))
    return out


# --- OpenAI --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_openai_chat_completion(up: FakeUpstream, http: httpx.Client, prefix: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}]}
    r = http.post(f"{prefix}/chat/completions", json=body, headers=OPENAI_KEY)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"] and isinstance(data["created"], int)
    assert data["model"] == "gpt-4o"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["message"]["content"] == REPLY
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    rec = up.last_request()
    assert rec is not None and rec["path"] == f"{prefix}/chat/completions" and rec["method"] == "POST"
    assert rec["json"] == body and rec["headers"]["authorization"] == "Bearer sk-test-123456"
    assert up.keys_seen() == ["sk-test-123456"]


def test_openai_streaming_with_usage(http: httpx.Client) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    r = http.post("/v1/chat/completions", json=body, headers=OPENAI_KEY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert all(event is None for event, _ in events)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == REPLY
    assert len(chunks) >= 6
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6


def test_openai_streaming_without_usage(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=OPENAI_KEY)
    chunks = [json.loads(data) for _, data in sse(r.text)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_openai_embeddings(http: httpx.Client) -> None:
    r = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a b", "c"]}, headers=OPENAI_KEY)
    data = r.json()
    assert data["object"] == "list" and data["model"] == "text-embedding-3-small"
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in data["data"])
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    single = http.post("/embeddings", json={"model": "e", "input": "a b"}, headers=OPENAI_KEY).json()
    assert single["data"][0]["embedding"] == data["data"][0]["embedding"]  # deterministic
    b64 = http.post("/v1/embeddings", json={"model": "e", "input": "a b", "encoding_format": "base64"}, headers=OPENAI_KEY)
    floats = struct.unpack("<8f", base64.b64decode(b64.json()["data"][0]["embedding"]))
    assert floats == pytest.approx(data["data"][0]["embedding"], abs=1e-6)


def test_models_openai_and_anthropic_shapes(up: FakeUpstream, http: httpx.Client) -> None:
    data = http.get("/v1/models", headers=OPENAI_KEY).json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert data["data"][0]["object"] == "model"
    up.set_models(["claude-a", "claude-b"])
    data = http.get("/v1/models", headers=ANTHROPIC).json()
    assert data["has_more"] is False and data["first_id"] == "claude-a" and data["last_id"] == "claude-b"
    assert data["data"][0] == {"type": "model", "id": "claude-a", "display_name": "claude-a", "created_at": data["data"][0]["created_at"]}
    assert [m["id"] for m in http.get("/models", headers=OPENAI_KEY).json()["data"]] == ["claude-a", "claude-b"]


def test_missing_key_is_401_and_unknown_path_404(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert http.post("/v1/v1/chat/completions", json=CHAT, headers=OPENAI_KEY).status_code == 404
    assert http.post("/v1/chat/completions", content=b"{nope", headers=OPENAI_KEY).status_code == 400


# --- Azure ---------------------------------------------------------------------------------------------------


def test_azure_chat_and_embeddings(up: FakeUpstream, http: httpx.Client) -> None:
    url = "/openai/deployments/mydeploy/chat/completions?api-version=2024-06-01"
    r = http.post(url, json={"messages": CHAT["messages"]}, headers=AZURE_KEY)
    assert r.status_code == 200 and r.json()["model"] == "mydeploy"
    assert r.json()["choices"][0]["message"]["content"] == REPLY
    rec = up.last_request()
    assert rec is not None and rec["query"] == {"api-version": "2024-06-01"} and rec["key"] == "az-key-123456"
    r = http.post("/openai/deployments/emb/embeddings?api-version=2024-06-01", json={"input": "x"}, headers=AZURE_KEY)
    assert len(r.json()["data"][0]["embedding"]) == 8
    stream = http.post("/openai/deployments/mydeploy/chat/completions?api-version=1", json={**CHAT, "stream": True}, headers=AZURE_KEY)
    assert sse(stream.text)[-1][1] == "[DONE]"


def test_azure_without_api_version_is_404(http: httpx.Client) -> None:
    r = http.post("/openai/deployments/mydeploy/chat/completions", json=CHAT, headers=AZURE_KEY)
    assert r.status_code == 404 and r.json()["error"]["message"] == "Resource not found"


# --- Anthropic -----------------------------------------------------------------------------------------------


def test_anthropic_message(up: FakeUpstream, http: httpx.Client) -> None:
    r = http.post("/v1/messages", json={**CLAUDE, "system": "be nice"}, headers=ANTHROPIC)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["type"] == "message" and data["role"] == "assistant" and data["id"].startswith("msg_")
    assert data["model"] == CLAUDE["model"]
    assert data["content"] == [{"type": "text", "text": REPLY}]
    assert data["stop_reason"] == "end_turn" and data["stop_sequence"] is None
    assert data["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert up.keys_seen() == ["ant-key-123456"]


def test_anthropic_requires_version_header(http: httpx.Client) -> None:
    r = http.post("/v1/messages", json=CLAUDE, headers={"x-api-key": "k"})
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"}}


def test_anthropic_streaming_events(http: httpx.Client) -> None:
    r = http.post("/v1/messages", json={**CLAUDE, "stream": True}, headers=ANTHROPIC)
    events = sse(r.text)
    names = [e for e, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas >= 3
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * deltas + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(d) for _, d in events]
    assert all(p["type"] == name for p, name in zip(payloads, names))
    assert payloads[0]["message"]["content"] == [] and payloads[0]["message"]["usage"]["input_tokens"] == 1
    assert "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta") == REPLY
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn" and payloads[-2]["usage"]["output_tokens"] == 4


# --- faults --------------------------------------------------------------------------------------------------


def test_fault_status_shapes_and_retry_after(up: FakeUpstream, http: httpx.Client) -> None:
    up.set_fault("status", status=429, retry_after=7, times=1)
    r = http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY)
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY).status_code == 200  # times=1 used up
    up.set_fault("status", status=401)
    r = http.post("/v1/messages", json=CLAUDE, headers=ANTHROPIC)
    assert r.status_code == 401 and r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"
    assert "retry-after" not in r.headers
    up.clear_faults()
    assert http.post("/v1/messages", json=CLAUDE, headers=ANTHROPIC).status_code == 200


def test_fault_matching_by_path_and_key(up: FakeUpstream, http: httpx.Client) -> None:
    up.set_fault("status", status=503, path_contains="/embeddings", key="bad-key", times=2)
    assert http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer bad-key"}).status_code == 200
    assert http.post("/v1/embeddings", json={"model": "e", "input": "x"}, headers=OPENAI_KEY).status_code == 200
    emb = {"model": "e", "input": "x"}
    statuses = [http.post("/v1/embeddings", json=emb, headers={"Authorization": "Bearer bad-key"}).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_fault_timeout_and_slow(up: FakeUpstream, http: httpx.Client) -> None:
    up.set_fault("timeout", seconds=5, times=1)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY, timeout=0.2)
    assert time.monotonic() - started < 1
    up.set_fault("slow", seconds=0.3, times=1)
    started = time.monotonic()
    assert http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_fault_drop_stream(up: FakeUpstream, http: httpx.Client) -> None:
    up.set_fault("drop_stream", times=1)
    assert http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY).status_code == 200  # not streaming: untouched
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=OPENAI_KEY) as r:
            lines.extend(line for line in r.iter_lines() if line)
    assert len(lines) == 2 and "[DONE]" not in "".join(lines)
    assert sse(http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=OPENAI_KEY).text)[-1][1] == "[DONE]"


def test_fault_malformed_and_close(up: FakeUpstream, http: httpx.Client) -> None:
    up.set_fault("malformed", times=1)
    r = http.post("/v1/messages", json=CLAUDE, headers=ANTHROPIC)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        r.json()
    up.set_fault("close", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY)
    assert http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY).status_code == 200


def test_fault_validation(up: FakeUpstream) -> None:
    with pytest.raises(ValueError):
        up.set_fault("explode")
    with pytest.raises(ValueError):
        up.set_fault("status")  # needs status=


# --- recording, control API, latency, lifecycle --------------------------------------------------------------


def test_key_extraction() -> None:
    assert extract_key({"authorization": "Bearer sk-1"}) == "sk-1"
    assert extract_key({"api-key": "az-1"}) == "az-1"
    assert extract_key({"x-api-key": "ant-1"}) == "ant-1"
    assert extract_key({"authorization": "Basic abc"}) is None
    assert extract_key({}) is None


def test_records_keep_the_last_1000() -> None:
    state = UpstreamState()
    for i in range(1005):
        state.record({"method": "GET", "path": f"/{i}", "query": {}, "headers": {}, "json": None, "key": None})
    records = state.requests()
    assert len(records) == 1000 and records[0]["path"] == "/5" and records[-1]["path"] == "/1004"


def test_http_control_api(up: FakeUpstream, http: httpx.Client) -> None:
    r = http.post("/__control/fault", json={"mode": "status", "status": 500, "times": 1, "path_contains": "/v1/chat"})
    assert r.status_code == 200 and r.json()["fault"]["opts"] == {"status": 500}
    assert http.post("/__control/fault", json={"mode": "nope"}).status_code == 400
    assert http.post("/v1/chat/completions?x=1", json=CHAT, headers={"X-Custom": "Yes", **OPENAI_KEY}).status_code == 500
    data = http.get("/__control/requests").json()
    assert data["keys_seen"] == ["sk-test-123456"]
    (rec,) = data["requests"]
    assert rec["query"] == {"x": "1"} and rec["headers"]["x-custom"] == "Yes" and rec["json"] == CHAT
    http.post("/__control/fault", json={"mode": "status", "status": 503})
    http.delete("/__control/fault")
    assert http.get("/v1/models", headers=OPENAI_KEY).status_code == 200
    cfg = http.post("/__control/config", json={"models": ["m1"], "latency_ms": 0}).json()
    assert cfg["models"] == ["m1"] and [m["id"] for m in http.get("/v1/models", headers=OPENAI_KEY).json()["data"]] == ["m1"]
    assert http.post("/__control/reset").json() == {"ok": True}
    assert up.requests == [] and http.get("/__control/requests").json()["requests"] == []


def test_latency(up: FakeUpstream, http: httpx.Client) -> None:
    up.set_latency(150)
    started = time.monotonic()
    http.post("/v1/chat/completions", json=CHAT, headers=OPENAI_KEY)
    assert time.monotonic() - started >= 0.15
    up.set_latency(150, spread_stream=True)
    started = time.monotonic()
    with http.stream("POST", "/v1/messages", json={**CLAUDE, "stream": True}, headers=ANTHROPIC) as r:
        first = None
        for _ in r.iter_lines():
            first = first or time.monotonic() - started
    total = time.monotonic() - started
    assert first is not None and first < 0.1 and total >= 0.14


def test_start_stop_frees_port_and_thread() -> None:
    started = time.monotonic()
    up = start_fake_upstream(port=0)
    assert time.monotonic() - started < 1 and up.port > 0 and up.url == f"http://127.0.0.1:{up.port}"
    thread = up._thread
    assert httpx.get(up.url + "/v1/models", headers=OPENAI_KEY).status_code == 200
    up.set_fault("timeout", seconds=30)  # a hanging request must not block stop()
    with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.get(up.url + "/v1/models", headers=OPENAI_KEY)
    started = time.monotonic()
    up.stop()
    assert time.monotonic() - started < 2
    assert thread is not None and not thread.is_alive()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", up.port))  # the port is free again


def test_command_line_entry_point() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--latency-ms", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/__control/config", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
                time.sleep(0.05)
        assert r.json()["latency_ms"] == 0
    finally:
        proc.terminate()
        proc.wait(5)


# --- LiteLLM against the fake upstream -----------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _text(litellm: Any, stream: bool, **kwargs: Any) -> str:
    response = litellm.completion(messages=MESSAGES, stream=stream, **kwargs)
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in response)
    return response.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_openai(up: FakeUpstream, litellm: Any, stream: bool) -> None:
    text = _text(litellm, stream, model="openai/gpt-4o-mini", api_base=up.url + "/v1", api_key="sk-test-123456")
    assert text == REPLY
    assert up.keys_seen() == ["sk-test-123456"]
    rec = up.last_request()
    assert rec is not None and rec["path"] == "/v1/chat/completions" and bool(rec["json"].get("stream")) is stream


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_azure(up: FakeUpstream, litellm: Any, stream: bool) -> None:
    text = _text(litellm, stream, model="azure/mydeploy", api_base=up.url, api_version="2024-06-01", api_key="az-key-123456")
    assert text == REPLY
    assert up.keys_seen() == ["az-key-123456"]
    rec = up.last_request()
    assert rec is not None and rec["path"] == "/openai/deployments/mydeploy/chat/completions"
    assert rec["query"] == {"api-version": "2024-06-01"} and rec["headers"]["api-key"] == "az-key-123456"


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_anthropic(up: FakeUpstream, litellm: Any, stream: bool) -> None:
    text = _text(litellm, stream, model="anthropic/claude-3-5-sonnet-20240620", api_base=up.url, api_key="ant-key-123456")
    assert text == REPLY
    assert up.keys_seen() == ["ant-key-123456"]
    rec = up.last_request()
    assert rec is not None and rec["path"] == "/v1/messages" and rec["headers"]["x-api-key"] == "ant-key-123456"


def test_litellm_embedding_and_async(up: FakeUpstream, litellm: Any) -> None:
    import asyncio

    emb = litellm.embedding(model="openai/text-embedding-3-small", api_base=up.url + "/v1", api_key="sk-e", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0]["embedding"]) == 8
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    async def call() -> Any:
        reply = await litellm.acompletion(
            model="openai/gpt-4o-mini", api_base=up.url + "/v1", api_key="sk-async", messages=MESSAGES
        )
        # drain litellm's success-logging queue while this loop lives (else it flushes noisily at exit)
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), 5)
        await GLOBAL_LOGGING_WORKER.stop()
        return reply

    reply = asyncio.run(call())
    assert reply.choices[0].message.content == REPLY
    assert up.keys_seen() == ["sk-e", "sk-async"]


def test_litellm_maps_faults(up: FakeUpstream, litellm: Any) -> None:
    up.set_fault("status", status=401)
    with pytest.raises(litellm.AuthenticationError):
        _text(litellm, False, model="anthropic/claude-3-5-sonnet-20240620", api_base=up.url, api_key="ant-bad")
    up.clear_faults()
    up.set_fault("status", status=429, retry_after=0)
    with pytest.raises(litellm.RateLimitError):  # the openai SDK retries by itself unless max_retries=0
        _text(litellm, False, model="openai/gpt-4o-mini", api_base=up.url + "/v1", api_key="sk-x", max_retries=0)
    assert len(up.requests) == 2


# --- OpenAI legacy completions and Responses, driven by the official openai SDK -----------------------------

# One schema per Responses stream event: ResponseStreamEvent is an anyOf, whose errors don't say what is wrong.
RESPONSE_EVENTS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
}
RESPONSE_INPUT = [
    {"role": "user", "content": [{"type": "input_text", "text": "one two three"}]},
    {"role": "assistant", "content": "four"},
]
WEATHER_PARAMETERS = {"type": "object", "properties": {}}


def sdk(up: FakeUpstream, prefix: str = "/v1") -> Any:
    import openai

    return openai.OpenAI(base_url=up.url + prefix, api_key="sk-test-123456", max_retries=0)


def chunk_violations(chunk: dict[str, Any]) -> list[str]:
    """Spec violations of a streamed text_completion chunk. OpenAI sends finish_reason null until the last chunk,
    but CreateCompletionResponse (shared by stream and non-stream) allows only a string there, so that is let by."""
    found = violations("CreateCompletionResponse", chunk)
    if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
        found = [v for v in found if not v.startswith("choices/0/finish_reason: null is not")]
    return found


def event_violations(event: dict[str, Any]) -> list[str]:
    return violations("ResponseStreamEvent", event) + violations(RESPONSE_EVENTS[event["type"]], event)


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_openai_sdk_completions(up: FakeUpstream, prefix: str) -> None:
    client = sdk(up, prefix)
    raw = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt=["one two", "three"], n=2, max_tokens=16, suffix="!"
    )
    assert violations("CreateCompletionResponse", raw.http_response.json()) == []
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "gpt-3.5-turbo-instruct" and isinstance(completion.created, int)
    assert [(c.index, c.text, c.logprobs, c.finish_reason) for c in completion.choices] == [
        (i, REPLY, None, "stop") for i in range(4)
    ]
    assert completion.usage is not None and completion.usage.to_dict() == {
        "prompt_tokens": 3,
        "completion_tokens": 16,
        "total_tokens": 19,
    }
    rec = up.last_request()
    assert rec is not None and rec["path"] == f"{prefix}/completions" and rec["key"] == "sk-test-123456"
    assert rec["json"]["prompt"] == ["one two", "three"] and rec["json"]["n"] == 2
    echoed = client.completions.create(model="m", prompt="Say: ", echo=True, logprobs=None)
    assert echoed.choices[0].text == "Say: " + REPLY
    assert violations("CreateCompletionResponse", echoed.to_dict()) == []


def test_openai_sdk_completions_stream(up: FakeUpstream) -> None:
    stream = sdk(up).completions.create(
        model="gpt-3.5-turbo-instruct", prompt="hi there", n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk.to_dict() for chunk in stream]
    for n, chunk in enumerate(chunks):
        assert chunk_violations(chunk) == [], f"chunk {n}: {chunk}"
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    *content, usage = chunks
    for index in (0, 1):
        mine = [c["choices"][0] for c in content if c["choices"][0]["index"] == index]
        assert len(mine) >= 3 and "".join(c["text"] for c in mine) == REPLY
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + ["stop"]
        assert all(c["logprobs"] is None for c in mine)
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}
    rec = up.last_request()
    assert rec is not None and rec["json"]["stream"] is True
    plain = [c.to_dict() for c in sdk(up).completions.create(model="m", prompt="x", stream=True)]
    assert all("usage" not in c for c in plain) and plain[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_openai_sdk_responses(up: FakeUpstream, prefix: str) -> None:
    client = sdk(up, prefix)
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini",
        input=RESPONSE_INPUT,
        instructions="be brief",
        max_output_tokens=50,
        temperature=0.5,
        previous_response_id="resp_earlier",
        store=False,
        metadata={"ticket": "42"},
        tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMETERS}],
    )
    body = raw.http_response.json()
    assert violations("Response", body) == []
    response = raw.parse()
    assert response.output_text == REPLY
    assert response.object == "response" and response.status == "completed" and response.id.startswith("resp_")
    assert response.model == "gpt-4o-mini" and response.error is None and response.incomplete_details is None
    (message,) = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert message.role == "assistant" and [c.to_dict() for c in message.content] == [
        {"type": "output_text", "text": REPLY, "annotations": [], "logprobs": []}
    ]
    assert response.usage is not None and response.usage.to_dict() == {
        "input_tokens": 6,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }
    assert (response.instructions, response.max_output_tokens, response.temperature) == ("be brief", 50, 0.5)
    assert response.previous_response_id == "resp_earlier" and response.metadata == {"ticket": "42"}
    assert body["tools"] == [  # as OpenAI echoes a function tool
        {"type": "function", "name": "get_weather", "description": None, "parameters": WEATHER_PARAMETERS, "strict": True}
    ]
    assert body["store"] is False and body["tool_choice"] == "auto"
    assert body["text"] == {"format": {"type": "text"}, "verbosity": "medium"} and body["truncation"] == "disabled"
    rec = up.last_request()
    assert rec is not None and rec["path"] == f"{prefix}/responses" and rec["json"]["input"] == RESPONSE_INPUT
    short = client.responses.create(model="gpt-4o", input="hi")
    assert short.usage is not None and (short.usage.input_tokens, short.usage.total_tokens) == (1, 5)
    assert short.instructions is None and short.tools == [] and short.id != response.id


def test_openai_sdk_responses_stream(up: FakeUpstream) -> None:
    client = sdk(up)
    events = [event.to_dict() for event in client.responses.create(model="gpt-4o-mini", input="hi there", stream=True)]
    for n, event in enumerate(events):
        assert event_violations(event) == [], f"event {n}: {event}"
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 3
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    created, completed = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == completed["id"]
    item_id = events[2]["item"]["id"]
    text_events = [e for e in events if e["type"].startswith("response.output_text")]
    where = {(e["item_id"], e["output_index"], e["content_index"], str(e["logprobs"])) for e in text_events}
    assert where == {(item_id, 0, 0, "[]")}
    assert "".join(e["delta"] for e in text_events[:-1]) == text_events[-1]["text"] == REPLY
    assert completed["status"] == "completed" and completed["output"] == [events[-2]["item"]]
    assert completed["usage"]["input_tokens"] == 2 and completed["usage"]["total_tokens"] == 6
    with client.responses.stream(model="gpt-4o-mini", input=RESPONSE_INPUT) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == REPLY
    assert final.usage is not None and final.usage.total_tokens == 8


def test_responses_stream_wire_format(http: httpx.Client) -> None:
    r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True}, headers=OPENAI_KEY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert all(event == json.loads(data)["type"] for event, data in events)  # `event:` line names each event
    assert events[-1][0] == "response.completed" and "[DONE]" not in r.text


# --- rerank --------------------------------------------------------------------------------------------------

COHERE_RERANK = "cohere/rerank-english-v3.0"
QUERY = "red apple pie"
DOCUMENTS = ["green pear", "an apple a day", {"text": "Red apple pie recipe"}, "apple"]


def test_rerank_http(up: FakeUpstream, http: httpx.Client) -> None:
    body = {"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS}
    data = http.post("/v2/rerank", json=body, headers=OPENAI_KEY).json()
    assert data["id"] and data["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    ranked = [(r["index"], r["relevance_score"]) for r in data["results"]]
    assert ranked == [(2, 1.0), (1, 0.333333), (3, 0.333333), (0, 0.0)]
    assert all("document" not in r for r in data["results"])  # only with return_documents
    assert data["usage"] == {"total_tokens": 14}
    top = http.post("/rerank", json={**body, "top_n": 2, "return_documents": True}, headers=OPENAI_KEY).json()
    assert top["results"] == [
        {"index": 2, "relevance_score": 1.0, "document": {"text": "Red apple pie recipe"}},
        {"index": 1, "relevance_score": 0.333333, "document": {"text": "an apple a day"}},
    ]
    assert [r["path"] for r in up.requests] == ["/v2/rerank", "/rerank"]
    assert http.post("/v1/rerank", json={**body, "top_n": 0}, headers=OPENAI_KEY).status_code == 400
    assert http.post("/v1/rerank", json={**body, "documents": "x"}, headers=OPENAI_KEY).status_code == 400
    assert http.post("/v1/rerank", json={"model": "m", "documents": []}, headers=OPENAI_KEY).status_code == 400
    assert http.post("/v1/rerank", json=body).status_code == 401


@pytest.mark.parametrize(
    ("model", "base", "path"),
    [
        (COHERE_RERANK, "", "/v2/rerank"),
        (COHERE_RERANK, "/v1/rerank", "/v1/rerank"),
        ("jina_ai/jina-reranker-v2-base-multilingual", "/ignored", "/v1/rerank"),
        ("hosted_vllm/BAAI/bge-reranker-v2-m3", "/v1", "/v1/rerank"),
        ("hosted_vllm/BAAI/bge-reranker-v2-m3", "", "/rerank"),
    ],
)
def test_litellm_rerank(up: FakeUpstream, litellm: Any, model: str, base: str, path: str) -> None:
    reply = litellm.rerank(
        model=model, api_base=up.url + base, api_key="rr-key-123456", query=QUERY, documents=DOCUMENTS, top_n=3
    )
    assert [r["index"] for r in reply.results] == [2, 1, 3]
    assert [r["relevance_score"] for r in reply.results] == [1.0, 0.333333, 0.333333]
    assert reply.results[0]["document"] == {"text": "Red apple pie recipe"}  # litellm.rerank sends return_documents
    rec = up.last_request()
    assert rec is not None and rec["path"] == path and rec["key"] == "rr-key-123456"
    assert rec["json"]["model"] == model.split("/", 1)[1] and rec["json"]["query"] == QUERY
    assert rec["json"]["documents"] == DOCUMENTS and rec["json"]["top_n"] == 3


def test_litellm_arerank_cohere_and_jina(up: FakeUpstream, litellm: Any) -> None:
    import asyncio

    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    async def call() -> list[Any]:
        replies = [
            await litellm.arerank(model=COHERE_RERANK, api_base=up.url, api_key="co-key", query=QUERY, documents=DOCUMENTS),
            await litellm.arerank(
                model="jina_ai/jina-reranker-v2-base-multilingual",
                api_base=up.url,
                api_key="jina-key",
                query=QUERY,
                documents=DOCUMENTS,
                top_n=1,
                return_documents=True,
            ),
        ]
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), 5)
        await GLOBAL_LOGGING_WORKER.stop()
        return replies

    cohere, jina = asyncio.run(call())
    assert [r["index"] for r in cohere.results] == [2, 1, 3, 0]  # no top_n: all, ties by index
    assert all("document" not in r for r in cohere.results)  # arerank leaves return_documents out
    assert cohere.meta["billed_units"] == {"search_units": 1}
    assert jina.results == [{"index": 2, "relevance_score": 1.0, "document": {"text": "Red apple pie recipe"}}]
    assert jina.meta["billed_units"]["total_tokens"] == 14
    assert [(r["path"], r["key"]) for r in up.requests] == [("/v2/rerank", "co-key"), ("/v1/rerank", "jina-key")]
    assert "return_documents" not in up.requests[0]["json"] and up.requests[1]["json"]["return_documents"] is True


# --- the new routes: faults, keys, LiteLLM -------------------------------------------------------------------


def test_new_routes_apply_faults_and_are_recorded(up: FakeUpstream, litellm: Any) -> None:
    import openai

    client = sdk(up)
    up.set_fault("status", status=500, times=3)
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="m", prompt="x")
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="m", input="x")
    with pytest.raises(litellm.InternalServerError):
        litellm.rerank(model=COHERE_RERANK, api_base=up.url, api_key="co-key", query="q", documents=["d"])
    assert client.completions.create(model="m", prompt="x").choices[0].text == REPLY  # times=3 used up
    assert [r["path"] for r in up.requests] == ["/v1/completions", "/v1/responses", "/v2/rerank", "/v1/completions"]
    assert up.keys_seen() == ["sk-test-123456", "sk-test-123456", "co-key", "sk-test-123456"]

    up.set_fault("drop_stream", path_contains="/responses", times=1)
    lines: list[str] = []
    body = {"model": "m", "input": "x", "stream": True}
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", up.url + "/v1/responses", json=body, headers=OPENAI_KEY) as r:
            lines.extend(line for line in r.iter_lines() if line.startswith("event: "))
    assert lines == ["event: response.created", "event: response.in_progress"]
    up.set_fault("malformed", path_contains="/rerank", times=1)
    with pytest.raises(json.JSONDecodeError):
        httpx.post(up.url + "/v1/rerank", json={"model": "m", "query": "q", "documents": []}, headers=OPENAI_KEY).json()


@pytest.mark.parametrize(
    ("path", "body", "missing"),
    [
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/completions", {"prompt": "x"}, "model"),
        ("/v1/responses", {"model": "m"}, "input"),
        ("/responses", {"input": "x"}, "model"),
        ("/v2/rerank", {"model": "m", "documents": []}, "query"),
    ],
)
def test_new_routes_check_key_and_fields(http: httpx.Client, path: str, body: dict[str, Any], missing: str) -> None:
    r = http.post(path, json=body, headers=OPENAI_KEY)
    assert r.status_code == 400 and r.json()["error"]["message"] == f"{missing}: Field required"
    r = http.post(path, json={**body, missing: "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_responses(up: FakeUpstream, litellm: Any, stream: bool) -> None:
    reply = litellm.responses(
        model="openai/gpt-4o-mini", input="hi there", api_base=up.url + "/v1", api_key="sk-resp", stream=stream
    )
    if stream:
        events = list(reply)
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = events[-1].response
    else:
        final = reply
        text = final.output[0].content[0].text
    assert text == REPLY and final.status == "completed" and final.usage.total_tokens == 6
    rec = up.last_request()
    assert rec is not None and rec["path"] == "/v1/responses" and rec["key"] == "sk-resp"
    assert bool(rec["json"].get("stream")) is stream


def test_litellm_text_completion(up: FakeUpstream, litellm: Any) -> None:
    reply = litellm.text_completion(
        model="openai/gpt-3.5-turbo-instruct", prompt="hi there", api_base=up.url + "/v1", api_key="sk-text"
    )
    assert reply.choices[0].text == REPLY and reply.usage.total_tokens == 6
    rec = up.last_request()
    assert rec is not None and rec["path"] == "/v1/completions" and rec["json"]["prompt"] == "hi there"
    reply = litellm.text_completion(
        model="azure_text/mydeploy", prompt="hi", api_base=up.url, api_version="2024-06-01", api_key="az-key-123456"
    )
    assert reply.choices[0].text == REPLY
    rec = up.last_request()
    assert rec is not None and rec["path"] == "/openai/deployments/mydeploy/completions"
    assert rec["query"] == {"api-version": "2024-06-01"} and rec["key"] == "az-key-123456"
