"""Hostile input: schemathesis over both OpenAPI schemas, and hand-made bad bodies.

Part 1 generates requests (valid and invalid) for every operation of /api/v1 (once with the super key, once
with a tenant key holding '*') and of /v1 (a tenant key holding gateway:Use) and checks each response: never
a 5xx, a documented status code and content type, and a body that matches the documented schema. Generated
path ids are replaced by the seeded objects' ids in most cases, so the handlers reach real rows.

/api/v1 runs in-process through Django's WSGI handler (inside the test's transaction); /v1 is served only by
eneo_site.asgi's gateway lane, so it runs against the live uvicorn server (`gateway`).

Part 2 sends what a generator rarely produces: bodies over DATA_UPLOAD_MAX_MEMORY_SIZE, malformed JSON, wrong
content types, NUL characters, huge integers and deeply nested JSON, and checks that nothing was written.
"""
from __future__ import annotations

import json
import zlib

import httpx
import pytest
import schemathesis
from django.conf import settings
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from credentials.models import TenantCredential
from credentials.services import credential_set
from eneo_site.api import api
from providers.checks.jobs import check_start
from providers.models import AIModel, Provider, ProviderCheck, ProviderKey, UsageRecord
from providers.gateway.api import openai_api
from providers.services import model_set_tenant_enabled
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.models import AuditEvent, TenantApiKey

from .factories import make_model, make_provider

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CONFIG = schemathesis.Config.from_dict({
    "seed": 20261125,
    "generation": {"mode": "all", "deterministic": True, "database": "none", "with-security-parameters": False},
})
FUZZ = hypothesis_settings(
    max_examples=20, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
GATEWAY_FUZZ = hypothesis_settings(FUZZ, max_examples=25)  # three operations only

rest_schema = schemathesis.openapi.from_dict(api.get_openapi_schema(), config=CONFIG)
gateway_schema = schemathesis.openapi.from_dict(openai_api.get_openapi_schema(), config=CONFIG)

_wsgi = get_wsgi_application()


# --- Seed data and aiming -------------------------------------------------------------------------------------

PROVIDER_TYPES = ["openai", "azure", "Anthropic", "vllm", "hosted_vllm", "mistral"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def seed(tenant, upstream_url: str) -> dict:
    """A tenant provider pointing at the fake upstream (key, chat and embedding models with aliases), an
    instance-level provider with a model enabled for the tenant, a queued check, a tenant credential and API
    keys. `rows` are coherent sets of path ids (a model of that provider, a key of that provider)."""
    own = make_provider(tenant=tenant, name="Acme upstream", base_url=upstream_url + "/v1",
                        api_key="sk-hostile-provider-key-0001")
    chat = make_model(own, model_id="gpt-4o-mini", alias="fast")
    embed = make_model(own, model_id="text-embedding-3-small", model_type="embedding", alias="embed")
    shared = make_provider(tenant=None, name="Instance upstream", base_url=upstream_url + "/v1",
                           api_key="sk-hostile-instance-key-0002")
    shared_model = make_model(shared, model_id="gpt-4o", alias="smart")
    model_set_tenant_enabled(actor=SYSTEM, model=shared_model, tenant=tenant, enabled=True)
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="anthropic", api_key="sk-ant-hostile-0003")
    check = check_start(kind=ProviderCheck.Kind.TEST, provider=own, tenant=tenant, actor=SYSTEM)
    star = api_key_create(actor=SYSTEM, tenant=tenant, name="star", scopes=["*"])
    gateway_key = api_key_create(actor=SYSTEM, tenant=tenant, name="gateway", scopes=["gateway:Use"]).plaintext
    common = {"tenant_id": str(tenant.pk), "task_id": check.task_id, "api_key_id": star.api_key.pk}
    return {
        "rows": [
            {**common, "provider_id": own.public_id, "model_pk": chat.pk, "key_id": own.keys.get().pk},
            {**common, "provider_id": own.public_id, "model_pk": embed.pk, "key_id": own.keys.get().pk},
            {**common, "provider_id": shared.public_id, "model_pk": shared_model.pk, "key_id": shared.keys.get().pk},
        ],
        "tenant_id": str(tenant.pk),
        "star_key": star.plaintext,
        "gateway_key": gateway_key,
        "models": ["fast", "embed", "smart", "openai/gpt-4o-mini", "gpt-4o"],
    }


def _pick(value, choices: list):
    """For two generated values in three, one of `choices` (chosen by the generated value, so a replayed
    example gets the same one): the handlers then reach real rows and valid inputs; the third keeps the
    generated value."""
    digest = zlib.crc32(repr(value).encode())
    if digest % 3 == 0:
        return value
    return choices[(digest // 3) % len(choices)]


def aim_at_seeds(case, world: dict) -> None:
    """Point most generated cases at the seeded rows and at real provider types."""
    params = case.path_parameters or {}
    if params:
        row = _pick(sorted(params.items(), key=str), world["rows"])
        if isinstance(row, dict):
            for name in params:
                if name == "key_id" and "/api-keys/" in case.operation.path:
                    params[name] = row["api_key_id"]
                elif name in row:
                    params[name] = row[name]
        for name in ("provider", "provider_type"):
            if name in params:
                params[name] = _pick(params[name], PROVIDER_TYPES)
    if isinstance(case.body, dict):
        if "provider_type" in case.body:
            case.body["provider_type"] = _pick(case.body["provider_type"], PROVIDER_TYPES)
        if "tenant_id" in case.body:
            case.body["tenant_id"] = _pick(case.body["tenant_id"], [world["tenant_id"], None])


def aim_at_models(case, world: dict) -> None:
    if isinstance(case.body, dict):
        if "model" in case.body:
            case.body["model"] = _pick(case.body["model"], world["models"])
        if isinstance(case.body.get("messages"), list):
            case.body["messages"] = _pick(case.body["messages"], [MESSAGES, MESSAGES[1:]])


def validate(case, **kwargs):
    """Call and check. A failure names the operation (in the test id) and ends with schemathesis's curl command
    (keys shown as [Filtered])."""
    case.call_and_validate(checks=CHECKS, **kwargs)


# --- Part 1: schemathesis ---------------------------------------------------------------------------------------

@pytest.fixture
def rest_world(db, tenant, upstream):
    """The seed, and Django's WSGI handler kept from closing the test's connection after each request (as
    django.test.Client does)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield seed(tenant, upstream.url)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def call_rest(case, world: dict, api_key: str):
    """One example in a savepoint rolled back afterwards: every example starts from the seed (so a replayed
    example behaves the same), and operations cannot starve each other by deleting the seeded rows."""
    aim_at_seeds(case, world)
    with transaction.atomic():
        try:
            validate(case, app=_wsgi, headers={"X-API-Key": api_key})
        finally:
            transaction.set_rollback(True)


@rest_schema.parametrize()
@FUZZ
def test_rest_api_as_sysadmin(case, rest_world):
    call_rest(case, rest_world, settings.SUPER_API_KEY)


@rest_schema.parametrize()
@FUZZ
def test_rest_api_as_tenant_key(case, rest_world):
    call_rest(case, rest_world, rest_world["star_key"])


@pytest.fixture
def gateway_world(gateway, upstream, tenant):
    return seed(tenant, upstream.url)


@gateway_schema.parametrize()
@GATEWAY_FUZZ
def test_openai_api(case, gateway, gateway_world):
    aim_at_models(case, gateway_world)
    validate(case, base_url=gateway.url, headers={"Authorization": f"Bearer {gateway_world['gateway_key']}"})


# --- Part 2: bodies a generator rarely sends ---------------------------------------------------------------------

ROWS = (TenantCredential, Provider, AIModel, ProviderKey, TenantApiKey, AuditEvent, UsageRecord)


def row_counts() -> dict:
    return {model.__name__: model.objects.count() for model in ROWS}


@pytest.fixture
def world(db, tenant, upstream):
    return seed(tenant, upstream.url)


def rest_targets(world: dict) -> dict:
    """Every REST operation that takes a body: (method, path, a valid body)."""
    row = world["rows"][0]
    tenant, provider, model, key = row["tenant_id"], row["provider_id"], row["model_pk"], row["key_id"]
    return {
        "put credential": ("put", f"/api/v1/sysadmin/tenants/{tenant}/credentials/openai",
                           {"api_key": "sk-valid-key-1234", "endpoint": "https://api.example.org/v1"}),
        "post api key": ("post", f"/api/v1/sysadmin/tenants/{tenant}/api-keys", {"name": "bot", "scopes": ["*"]}),
        "post provider": ("post", "/api/v1/ai-providers",
                          {"name": "New", "provider_type": "openai", "base_url": "https://api.example.org/v1",
                           "config": {"organization": "org-1"}, "rpm": 60, "api_key": "sk-new-provider-5678",
                           "models": [{"model_id": "gpt-4o", "alias": "four", "model_config": {"seed": 1}}]}),
        "patch provider": ("patch", f"/api/v1/ai-providers/{provider}", {"name": "Renamed", "rpm": 10,
                                                                        "config": {"organization": "org-2"}}),
        "post model": ("post", f"/api/v1/ai-providers/{provider}/models",
                       {"model_id": "gpt-4.1", "context_window": 1000, "model_config": {"seed": 2}}),
        "patch model": ("patch", f"/api/v1/ai-providers/{provider}/models/{model}",
                        {"display_label": "Fast one", "max_output_tokens": 100}),
        "post key": ("post", f"/api/v1/ai-providers/{provider}/keys", {"secret": "sk-another-key-9999", "label": "b"}),
        "patch key": ("patch", f"/api/v1/ai-providers/{provider}/keys/{key}", {"label": "old", "is_active": True}),
    }


REST_TARGETS = ["put credential", "post api key", "post provider", "patch provider", "post model", "patch model",
                "post key", "patch key"]


def send(client, method: str, path: str, body: bytes, content_type: str = "application/json"):
    return getattr(client, method)(path, data=body, content_type=content_type,
                                   HTTP_X_API_KEY=settings.SUPER_API_KEY)


def assert_json_4xx(response, statuses=None, *, key="detail", label=""):
    assert 400 <= response.status_code < 500, (label, response.status_code, response.content[:300])
    if statuses is not None:
        assert response.status_code in statuses, (label, response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), (label, response["Content-Type"])
    body = json.loads(response.content)
    assert body.get(key), body
    return body


def nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def with_deep_field(body: dict, name: str, depth: int) -> bytes:
    """The body plus a field holding lists `depth` deep, written as text (json.dumps would hit the recursion
    limit first)."""
    return (json.dumps(body)[:-1] + f', "{name}": ' + "[" * depth + "1" + "]" * depth + "}").encode()


def nul_variants(body: dict):
    """The body with a NUL character in each string field in turn (nested strings included)."""
    for name, value in body.items():
        if isinstance(value, str):
            yield name, {**body, name: value[:2] + "\x00" + value[2:]}
        elif isinstance(value, list) and value and isinstance(value[0], str):
            yield name, {**body, name: ["bad\x00scope"]}
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for inner, inner_body in nul_variants(value[0]):
                yield f"{name}.{inner}", {**body, name: [inner_body]}
        elif isinstance(value, dict):
            yield f"{name} key", {**body, name: {"a\x00b": "x"}}
            yield f"{name} value", {**body, name: {"a": "x\x00y"}}


def huge_int_variants(body: dict):
    for name in ("rpm", "context_window", "max_output_tokens"):
        if name in body:
            for number in ("2147483648", "9" * 30, "1" + "0" * 5000, "-1", "1e400"):
                yield f"{name}={number[:12]}", json.dumps(body).replace(f'"{name}": {body[name]}',
                                                                    f'"{name}": {number}')
    for name in ("config", "model_config", "extra"):
        if name in body:
            yield f"{name} bigint", json.dumps({**body, name: {"n": 10 ** 300}})
    if "models" in body:
        yield "models[0].context_window", json.dumps({**body, "models": [{**body["models"][0],
                                                                          "context_window": 10 ** 30}]})


@pytest.mark.parametrize("target", REST_TARGETS)
def test_rest_rejects_hostile_bodies_without_writing(client, world, target):
    """Each hostile variant of a valid body is a JSON 4xx with the expected status and changes no row."""
    method, path, body = rest_targets(world)[target]
    before = row_counts()
    bad = [
        ("malformed", b'{"name": "x",', "application/json", {400}),
        ("truncated", json.dumps(body)[:-1].encode(), "application/json", {400}),
        ("not utf-8", b'{"name": "\xff\xfe"}', "application/json", {400}),
        ("form encoded", b"name=x&provider_type=openai", "application/x-www-form-urlencoded", {415}),
        ("json as text/plain", json.dumps(body).encode(), "text/plain", {415}),
        ("json as xml", json.dumps(body).encode(), "application/xml", {415}),
        ("multipart", b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b--\r\n",
         "multipart/form-data; boundary=b", {415}),
        ("a list", b"[1, 2]", "application/json", {422}),
        ("a string", b'"x"', "application/json", {422}),
        ("null", b"null", "application/json", {422}),
        ("deeply nested", with_deep_field(body, "extra_field", 100_000), "application/json", {400}),
        ("nested 65", json.dumps({**body, "config": {"a": nested(63)}}).encode(), "application/json", {400}),
    ]
    bad += [(f"NUL in {name}", json.dumps(variant).encode(), "application/json", {422})
            for name, variant in nul_variants(body)]
    bad += [(f"huge {name}", text.encode(), "application/json", {400, 422})
            for name, text in huge_int_variants(body)]
    for label, payload, content_type, statuses in bad:
        response = send(client, method, path, payload, content_type)
        assert_json_4xx(response, statuses, label=label)
        assert row_counts() == before, label
    # The valid body still works: the rejections were about the hostile parts only.
    response = send(client, method, path, json.dumps(body).encode())
    assert response.status_code in (200, 201), response.content


@pytest.mark.parametrize("depth", [10, 60])
def test_reasonable_nesting_is_accepted(client, world, depth):
    method, path, body = rest_targets(world)["post provider"]
    body = {**body, "provider_type": "vertex_ai", "config": {  # a JSON setting: the service account
        "vertex_project": "p", "vertex_location": "europe-west4", "vertex_credentials": {"a": nested(depth - 3)}}}
    assert send(client, method, path, json.dumps(body).encode()).status_code == 201


HOSTILE_URLS = [
    ("get", "/api/v1/ai-providers?q=a%00b"), ("get", "/api/v1/ai-providers?provider_type=open%00ai"),
    ("get", "/api/v1/ai-providers?offset=99999999999999999999"), ("get", "/api/v1/ai-providers?limit=0"),
    ("get", "/api/v1/ai-providers?offset=-1"), ("get", "/api/v1/ai-providers/{provider_id}%00"),
    ("get", "/api/v1/ai-providers/{provider_id}/models/99999999999999999999"),
    ("get", "/api/v1/ai-providers/{provider_id}/keys?limit=-1"),
    ("get", "/api/v1/usage?model=a%00b"), ("get", "/api/v1/usage?provider_id=aip_%00"),
    ("get", "/api/v1/usage?since=not-a-date"), ("get", "/api/v1/usage?api_key_prefix=%00"),
    ("get", "/api/v1/usage/summary?until=99999-01-01"), ("get", "/api/v1/audit-events?action=a%00b"),
    ("get", "/api/v1/audit-events?offset=99999999999999999999"), ("get", "/api/v1/tasks/%00"),
    ("get", "/api/v1/provider-types/open%00ai"), ("get", "/api/v1/sysadmin/tenants/{tenant_id}%00/credentials"),
    ("get", "/api/v1/sysadmin/tenants/{tenant_id}/api-keys?offset=99999999999999999999"),
    ("delete", "/api/v1/sysadmin/tenants/{tenant_id}/credentials/open%00ai"),
    ("delete", "/api/v1/sysadmin/tenants/{tenant_id}/api-keys/99999999999999999999"),
    ("delete", "/api/v1/ai-providers/{provider_id}/keys/99999999999999999999"),
    ("delete", "/api/v1/ai-providers/{provider_id}/models/{model_pk}/tenants/{tenant_id}%00"),
]


@pytest.mark.parametrize("method,url", HOSTILE_URLS)
def test_hostile_query_and_path_values_are_4xx(client, world, method, url):
    """NUL characters, huge numbers and junk in query strings and path segments: a JSON 4xx, nothing written."""
    before = row_counts()
    response = getattr(client, method)(url.format(**world["rows"][0]), HTTP_X_API_KEY=settings.SUPER_API_KEY)
    assert_json_4xx(response, label=url)
    assert row_counts() == before


OVERSIZE = [
    ("put", "/api/v1/sysadmin/tenants/{tenant_id}/credentials/openai", "api_key"),
    ("post", "/api/v1/ai-providers", "name"),
]


@pytest.mark.parametrize("method,path,field", OVERSIZE, ids=["put credential", "post provider"])
def test_rest_oversize_body_is_413(client, world, method, path, field):
    before = row_counts()
    payload = json.dumps({field: "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024), "provider_type": "openai"})
    response = send(client, method, path.format(tenant_id=world["tenant_id"]), payload.encode())
    body = assert_json_4xx(response, {413})
    assert "too large" in body["detail"]
    assert row_counts() == before


# --- /v1 over real HTTP -----------------------------------------------------------------------------------------

def oversize_json(chunked: bool):
    """A JSON body a bit over DATA_UPLOAD_MAX_MEMORY_SIZE, whole (Content-Length) or as chunks (no length)."""
    payload = json.dumps({"model": "fast", "name": "x", "provider_type": "openai", "api_key": "sk-oversize-0000",
                          "messages": [{"role": "user", "content": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024)}]})
    if not chunked:
        return payload.encode()
    step = 256 * 1024
    return (payload[i:i + step].encode() for i in range(0, len(payload), step))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/ai-providers",
                                  "/api/v1/sysadmin/tenants/{tenant_id}/credentials/openai"])
def test_oversize_body_over_asgi_is_413(gateway, gateway_world, path, chunked):
    """Under uvicorn (production): eneo_site.asgi.BodyLimit answers before the body reaches Django, also when
    it is chunked (Django itself would check a Content-Length only, after spooling the body to disk)."""
    before = row_counts()
    key = gateway_world["gateway_key"] if path.startswith("/v1/") else settings.SUPER_API_KEY
    method = "PUT" if "credentials" in path else "POST"
    response = httpx.request(method, gateway.url + path.format(tenant_id=gateway_world["tenant_id"]),
                             content=oversize_json(chunked), timeout=30,
                             headers={"Authorization": f"Bearer {key}", "X-API-Key": key,
                                      "Content-Type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    message = body["error"]["message"] if path.startswith("/v1/") else body["detail"]
    assert "too large" in message
    if path.startswith("/v1/"):
        assert body["error"]["code"] == "request_too_large"
    gateway.flush_usage()
    expected = dict(before)
    if path.startswith("/v1/"):  # the known key's refusal is in the usage ledger; nothing else is written
        expected["UsageRecord"] += 1
        assert UsageRecord.objects.get().status == "refused"
    assert row_counts() == expected


def test_openai_rejects_hostile_bodies(gateway, gateway_world, upstream):
    headers = {"Authorization": f"Bearer {gateway_world['gateway_key']}"}
    chat = {"model": "fast", "messages": MESSAGES}
    embed = {"model": "embed", "input": "hello"}
    cases = [
        ("chat/completions", b'{"model": "fast",', "application/json", {400}),
        ("chat/completions", b'\xff\xfe{}', "application/json", {400}),
        ("chat/completions", json.dumps(chat).encode(), "text/plain", {415}),
        ("chat/completions", b"model=fast", "application/x-www-form-urlencoded", {415}),
        ("chat/completions", b"[]", "application/json", {400}),
        ("chat/completions", with_deep_field(chat, "metadata", 100_000), "application/json", {400}),
        ("chat/completions", json.dumps({**chat, "messages": [{"role": "user", "content": nested(70)}]}).encode(),
         "application/json", {400}),
        ("chat/completions", json.dumps({**chat, "max_tokens": 10 ** 30}).encode(), "application/json", {400}),
        ("chat/completions", b'{"model": "fast", "messages": [], "max_tokens": 1' + b"0" * 5000 + b"}",
         "application/json", {400}),
        ("chat/completions", json.dumps({**chat, "temperature": 1e308 * 10}).encode(), "application/json", {400}),
        ("chat/completions", json.dumps({**chat, "model": "fa\x00st"}).encode(), "application/json", {400, 404}),
        ("chat/completions", json.dumps({**chat, "messages": [{"role": "user", "content": "a\x00b"}]}).encode(),
         "application/json", {200, 400}),
        ("chat/completions", json.dumps({**chat, "messages": [{"role": "nobody", "content": 5}]}).encode(),
         "application/json", {200, 400}),  # passed on: the provider judges message contents
        ("chat/completions", json.dumps({**chat, "n": 10 ** 30}).encode(), "application/json", {400}),
        ("embeddings", json.dumps({**embed, "input": [10 ** 30]}).encode(), "application/json", {400}),
        ("embeddings", json.dumps({**embed, "input": nested(70, "x")}).encode(), "application/json", {400}),
        ("embeddings", json.dumps({**embed, "input": "a\x00b"}).encode(), "application/json", {200, 400}),
        ("embeddings", json.dumps({**embed, "dimensions": -(10 ** 30)}).encode(), "application/json", {400}),
    ]
    for endpoint, payload, content_type, statuses in cases:
        response = httpx.post(f"{gateway.url}/v1/{endpoint}", content=payload, timeout=30,
                              headers={**headers, "Content-Type": content_type})
        label = (endpoint, payload[:80], response.status_code, response.text[:300])
        assert response.status_code in statuses, label
        assert response.headers["content-type"].startswith("application/json"), label
        if response.status_code >= 400:
            assert response.json()["error"]["message"], label
