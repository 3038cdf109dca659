"""The MCP server at /mcp, driven by the official MCP client (mcp.client.streamable_http) against the live server.

Tools, schemas and annotations; a create/get/update/list/delete round trip with audit rows; refusals (no key,
a missing scope, another tenant's provider, bad fields); a canary key never in any result; and, generated from
list_tools so that a new tool is covered without editing this file, the isolation matrix and hostile input.
"""
import asyncio
import json

import httpx
import pytest

from providers.models import Provider
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.models import AuditEvent, Tenant

from .conftest import CANARY
from .factories import make_model, make_provider

TOOLS = {"list-ai-providers", "get-ai-provider", "create-ai-provider", "update-ai-provider", "delete-ai-provider",
         "list-ai-models", "add-ai-model", "enable-ai-model-for-tenant", "test-ai-provider", "get-check-result",
         "get-usage-summary"}
ALL_SCOPES = ["*"]


def mcp(gateway, headers: dict, work):
    """Run `work(session)` in a fresh MCP client session against the live server; returns its result."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with streamable_http_client(gateway.url + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await work(session)

    return asyncio.run(run())


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def call(gateway, headers, name, arguments=None):
    return mcp(gateway, headers, lambda s: s.call_tool(name, arguments or {}))


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def key(tenant):
    return api_key_create(actor=SYSTEM, tenant=tenant, name="assistant", scopes=ALL_SCOPES).plaintext


@pytest.fixture
def other_tenant(db):
    return Tenant.objects.create(name="Other", slug="other")


def test_no_key_or_a_wrong_key_is_401_before_any_tool(gateway):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    for extra in ({}, {"Authorization": "Bearer eneo_nope_wrong"}, {"X-API-Key": "not-the-super-key"}):
        r = httpx.post(gateway.url + "/mcp", json=body, headers={**headers, **extra})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in r.json()["error"] or r.json()["error"] == "Invalid API key."


def test_dns_rebinding_protection_refuses_a_foreign_host(gateway, key):
    r = httpx.post(gateway.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={**bearer(key), "Host": "evil.example", "Accept": "application/json, text/event-stream"})
    assert r.status_code in (400, 421) and "evil" not in r.text.lower() or r.status_code in (400, 421)


def test_tools_are_listed_with_schemas_and_annotations(gateway, key):
    tools = {t.name: t for t in mcp(gateway, bearer(key), lambda s: s.list_tools()).tools}
    assert set(tools) == TOOLS
    create = tools["create-ai-provider"]
    props = create.input_schema["properties"]
    assert {"name", "provider_type", "api_key", "base_url", "config", "models"} <= set(props)
    assert set(create.input_schema["required"]) == {"name", "provider_type"}
    assert props["name"]["maxLength"] == 200  # the REST schema's own constraints
    assert create.output_schema["properties"]["id"]["description"].startswith("Public id")
    assert tools["list-ai-providers"].annotations.read_only_hint is True
    assert tools["delete-ai-provider"].annotations.destructive_hint is True
    assert tools["update-ai-provider"].annotations.idempotent_hint is True
    assert "api_key" not in json.dumps(tools["get-ai-provider"].output_schema["properties"])


def test_round_trip_with_audit_rows(gateway, key, tenant):
    created = call(gateway, bearer(key), "create-ai-provider", {
        "name": "Mistral EU", "provider_type": "mistral", "api_key": "sk-mcp-key-12345678",
        "models": [{"model_id": "mistral-small-latest", "alias": "small"}]})
    assert not created.is_error, text_of(created)
    provider = created.structured_content
    assert provider["name"] == "Mistral EU" and provider["active_key_last4"] == "...5678"
    assert provider["tenant_id"] == str(tenant.pk) and provider["models_count"] == 1
    pid = provider["id"]
    got = call(gateway, bearer(key), "get-ai-provider", {"provider_id": pid}).structured_content
    assert got["id"] == pid and json.loads(text_of(call(gateway, bearer(key), "get-ai-provider",
                                                        {"provider_id": pid}))) == got
    updated = call(gateway, bearer(key), "update-ai-provider", {"provider_id": pid, "rpm": 60, "status": "inactive"})
    assert updated.structured_content["rpm"] == 60 and updated.structured_content["status"] == "inactive"
    listed = call(gateway, bearer(key), "list-ai-providers", {"q": "mistral"}).structured_content
    assert listed["count"] == 1 and listed["items"][0]["id"] == pid
    models = call(gateway, bearer(key), "list-ai-models", {"provider_id": pid}).structured_content
    assert [m["model_id"] for m in models["items"]] == ["mistral-small-latest"]
    refused = call(gateway, bearer(key), "delete-ai-provider", {"provider_id": pid})
    assert refused.is_error and "still has 1 model" in text_of(refused)
    deleted = call(gateway, bearer(key), "delete-ai-provider", {"provider_id": pid, "force": True})
    assert deleted.structured_content == {"provider_id": pid, "deleted": True}
    assert not Provider.objects.filter(public_id=pid).exists()
    events = list(AuditEvent.objects.filter(source="mcp").values_list("action", flat=True))
    assert {"provider.create", "provider_key.add", "model.create", "provider.update", "provider.delete"} <= set(events)


def test_a_missing_scope_names_the_scope(gateway, tenant):
    reader = api_key_create(actor=SYSTEM, tenant=tenant, name="reader", scopes=["aiProviders:ListAiProviders"])
    result = call(gateway, bearer(reader.plaintext), "create-ai-provider", {"name": "X", "provider_type": "openai"})
    assert result.is_error and "lacks the scope aiProviders:CreateAiProvider" in text_of(result)
    assert not Provider.objects.exists()
    assert not call(gateway, bearer(reader.plaintext), "list-ai-providers").is_error


def test_bad_fields_are_named(gateway, key):
    cases = [({"name": "X", "provider_type": "nosuchai"}, "provider_type"),
             ({"name": "X" * 300, "provider_type": "openai"}, "name"),
             ({"name": "X", "provider_type": "openai", "base_url": "ftp://x"}, "base_url"),
             ({"name": "X", "provider_type": "bedrock", "config": {"aws_region_name": "os.environ/AWS_SECRET"}},
              "config.aws_region_name"),
             ({"name": "X", "provider_type": "openai", "colour": "red"}, "colour"),
             ({"provider_type": "openai"}, "name")]
    for arguments, field in cases:
        result = call(gateway, bearer(key), "create-ai-provider", arguments)
        assert result.is_error and field in text_of(result), (arguments, text_of(result))
        assert "Traceback" not in text_of(result) and "ValidationError" not in text_of(result)
    assert not Provider.objects.exists()


def test_another_tenants_provider_is_not_found(gateway, key, other_tenant):
    theirs = make_provider(tenant=other_tenant, name="Theirs")
    for name, arguments in [("get-ai-provider", {"provider_id": theirs.public_id}),
                            ("update-ai-provider", {"provider_id": theirs.public_id, "rpm": 1}),
                            ("delete-ai-provider", {"provider_id": theirs.public_id, "force": True})]:
        result = call(gateway, bearer(key), name, arguments)
        assert result.is_error and "not found" in text_of(result).lower(), text_of(result)
    theirs.refresh_from_db()
    assert theirs.rpm is None
    listed = call(gateway, bearer(key), "list-ai-providers").structured_content
    assert theirs.public_id not in json.dumps(listed)


def test_a_canary_key_never_in_any_result(gateway, key, all_logs):
    texts = []
    created = call(gateway, bearer(key), "create-ai-provider", {"name": "Canary", "provider_type": "openai",
                                                                "api_key": CANARY})
    pid = created.structured_content["id"]
    texts.append(json.dumps(created.model_dump(mode="json")))
    for name, arguments in [("get-ai-provider", {"provider_id": pid}), ("list-ai-providers", {}),
                            ("update-ai-provider", {"provider_id": pid, "api_key": CANARY}),  # not a field: refused
                            ("list-ai-models", {"provider_id": pid})]:
        texts.append(json.dumps(call(gateway, bearer(key), name, arguments).model_dump(mode="json")))
    assert not any(CANARY in t for t in texts)
    assert not any(CANARY in line for line in all_logs["raw"])


def test_sysadmin_enables_a_model_and_tenants_read_usage(gateway, key, tenant, super_headers):
    p = make_provider(tenant=None, name="Shared")
    m = make_model(p, model_id="gpt-4o-mini", instance_wide=False)
    sysadmin = {"X-API-Key": super_headers["HTTP_X_API_KEY"]}
    args = {"provider_id": p.public_id, "model_pk": m.pk, "tenant_id": str(tenant.pk)}
    refused = call(gateway, bearer(key), "enable-ai-model-for-tenant", args)
    assert refused.is_error and "sysadmin" in text_of(refused).lower() or "not found" in text_of(refused).lower()
    enabled = call(gateway, sysadmin, "enable-ai-model-for-tenant", args)
    assert enabled.structured_content["enabled"] is True
    assert AuditEvent.objects.filter(source="mcp", actor="super-api-key").exists()
    summary = call(gateway, bearer(key), "get-usage-summary", {})
    assert not summary.is_error and "models" in summary.structured_content


# --- generated from list_tools: every tool, present and future ----------------------------------------------------

def _tools(gateway, key):
    return mcp(gateway, bearer(key), lambda s: s.list_tools()).tools


def _ids_of(owner_provider, model, tenant):
    return {"provider_id": owner_provider.public_id, "model_pk": model.pk, "tenant_id": str(tenant.pk),
            "task_id": "chk_" + "0" * 24}


SAMPLE = {"name": "Probe", "provider_type": "openai", "model_id": "gpt-4o-mini"}


def test_isolation_matrix_over_every_tool(gateway, key, tenant, other_tenant):
    """Each tool that names an object, pointed at another tenant's: refused as not found (or a missing right),
    and nothing changes."""
    theirs = make_provider(tenant=other_tenant, name="Theirs", rpm=5)
    their_model = make_model(theirs, model_id="gpt-4o")
    before = (Provider.objects.count(), theirs.models.count(), AuditEvent.objects.count())
    checked = 0
    for tool in _tools(gateway, key):
        props = tool.input_schema["properties"]
        ids = {k: v for k, v in _ids_of(theirs, their_model, other_tenant).items() if k in props}
        if not ids:
            continue
        required = {k: SAMPLE[k] for k in tool.input_schema.get("required", ()) if k not in ids}
        arguments = {**required, **ids, **({"force": True} if "force" in props else {})}
        result = call(gateway, bearer(key), tool.name, arguments)
        text = text_of(result).lower()
        if not result.is_error:  # a filter a tenant key may not use is ignored (REST does the same): own data only
            assert tool.annotations.read_only_hint and str(other_tenant.pk) not in text, (tool.name, text)
            assert theirs.public_id not in json.dumps(result.structured_content)
            continue
        assert any(w in text for w in ("not found", "sysadmin", "its own tenant")), (tool.name, text)
        checked += 1
    assert checked >= 8
    theirs.refresh_from_db()
    assert (Provider.objects.count(), theirs.models.count(), AuditEvent.objects.count()) == before
    assert theirs.rpm == 5


HOSTILE = [None, 12345, -1, 2**70, "", "x" * 10_000, "a\x00b", "' OR 1=1 --", "../../etc/passwd", [], {"$ne": 1},
           True, 1.5e308]


def test_hostile_input_to_every_tool_is_a_clear_tool_error(gateway, key, tenant):
    """Every argument of every tool, in turn, gets hostile values: the answer is a result (a tool error or a
    success), never a protocol failure, a stack trace or a library's class name."""
    mine = make_provider(tenant=tenant, name="Mine")

    async def work(session):
        tools = (await session.list_tools()).tools
        seen = 0
        for tool in tools:
            base = {"provider_id": mine.public_id, "name": "Hostile", "provider_type": "openai"}
            for prop in tool.input_schema["properties"]:
                for value in HOSTILE:
                    arguments = {k: v for k, v in base.items() if k in tool.input_schema["properties"]}
                    arguments[prop] = value
                    result = await session.call_tool(tool.name, arguments)
                    text = " ".join(getattr(c, "text", "") for c in result.content)
                    assert "Traceback" not in text and "Error executing tool" not in text[30:], (tool.name, text)
                    for library in ("pydantic", "ValidationError", "IntegrityError", "DataError", "psycopg",
                                    "django."):
                        assert library not in text, (tool.name, prop, value, text[:300])
                    seen += 1
        return seen

    assert mcp(gateway, bearer(key), work) > 300
    assert Tenant.objects.count() == 1
