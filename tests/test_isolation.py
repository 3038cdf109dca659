"""Tenant isolation matrix: a caller of tenant A never reaches tenant B's objects, nor gets B's credential used.

Nothing here is a hand-written list of endpoints or pages, so a new one is covered without touching this file:
- REST and /v1 operations come from the two OpenAPI schemas, which django-ninja builds from the routers
  mounted in the URL conf. Path parameters are filled from PATH_PARAMS, query parameters from QUERY_PARAMS,
  bodies from BODIES. An operation with a parameter or a body this file does not know FAILS, saying what to add.
- Admin pages come from admin.site._registry and each ModelAdmin's get_urls(). A registered model needs a data
  factory in ADMIN_OBJECTS or a reason in ADMIN_ALLOW_LIST.

What must hold for tenant A's caller: B's objects are 404 (401 on sysadmin-only routes, which a tenant key may
not use at all), exactly the answer for an id that never existed (so existence does not leak); lists and pages
never show B's identifiers; B's rows are unchanged afterwards and B's keys never reach the fake upstream.
Positive controls (the same calls with A's own ids) prove that each 404 comes from the scoping, not from a wrong
URL or an invalid body.
"""
from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable
from urllib.parse import quote as urlquote

import httpx
import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models import Q
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from credentials.models import TenantCredential
from credentials.services import credential_set
from providers import services as provider_services
from providers.models import (AIModel, AIModelUserObjectPermission, Provider, ProviderCheck, ProviderKey,
                              ProviderUserObjectPermission, TenantModelEnablement, UsageRecord)
from tenants.actors import SYSTEM
from tenants.api_keys import api_key_create
from tenants.models import AuditEvent, Tenant, TenantApiKey, TenantMembership
from tenants.services import audit_record, tenant_create

from .factories import make_model, make_provider, make_user, usage_record_create

CHAT = [{"role": "user", "content": "hi"}]


# --- Each tenant's data ----------------------------------------------------------------------------------------

@dataclass
class Side:
    """One tenant's objects, and the values that fill path parameters, query parameters and bodies.

    `marker` is in the name of every object of the tenant, so a leak shows up as the marker in a response.
    """

    label: str
    marker: str
    tenant: Tenant | None = None
    token: str = ""  # the tenant's API key (scope "*"): the caller
    # values substituted into requests (attribute names are what PATH_PARAMS and QUERY_PARAMS refer to)
    tenant_id: str = ""
    provider_id: str = ""
    provider_pk: str = ""
    provider_name: str = ""
    model_pk: int = 0
    model_id: str = ""
    model_name: str = ""  # a name /v1/models lists for the model (<provider type>/<model id>)
    username: str = ""  # the tenant admin's user name
    provider_key_id: int = 0
    api_key_id: int = 0
    api_key_prefix: str = ""
    task_id: str = ""
    chat_names: list[str] = field(default_factory=list)
    embedding_names: list[str] = field(default_factory=list)
    upstream_keys: list[str] = field(default_factory=list)  # the provider key and credential it owns
    identifiers: list[str] = field(default_factory=list)  # what must never appear in another tenant's responses
    objects: dict[str, Any] = field(default_factory=dict)


def ghost_of(side: Side) -> Side:
    """The same shape with ids that never existed: B's answers must equal these (no existence oracle)."""
    never = 2_000_000_000
    return Side(label="ghost", marker="ghost", tenant_id=str(uuid.uuid4()), provider_id="aip_" + "0" * 24,
                provider_pk=str(never), provider_name="Ghost provider", model_pk=never, model_id="ghost-chat-model",
                model_name="openai/ghost-chat-model", username="ghost-admin",
                provider_key_id=never, api_key_id=never, api_key_prefix="0" * 12, task_id="0" * 32,
                chat_names=[n.replace(side.marker, "ghost") for n in side.chat_names],
                embedding_names=[n.replace(side.marker, "ghost") for n in side.embedding_names])


def build_side(tenant: Tenant, marker: str, upstream_url: str, tag: str, *, credential: bool = True) -> Side:
    """A full tenant: provider (key, chat + embedding model), credential, check, usage record, API keys, admin."""
    title = marker.capitalize()
    provider = make_provider(
        tenant=tenant, name=f"{title} private OpenAI", base_url=upstream_url + "/v1",
        api_key=f"sk-{marker}-provider-key-{tag}P1",
        models=[{"model_id": f"{marker}-chat-model", "alias": f"{marker}-alias", "display_label": f"{title} chat"},
                {"model_id": f"{marker}-embed-model", "alias": f"{marker}-embed", "model_type": "embedding"}])
    model = provider.models.get(model_id=f"{marker}-chat-model")
    keys = [f"sk-{marker}-provider-key-{tag}P1"]
    cred = None
    if credential:
        keys.append(f"sk-{marker}-cred-key-{tag}C1")
        cred = credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key=keys[-1])
    caller = api_key_create(actor=SYSTEM, tenant=tenant, name=f"{title} bot", scopes=["*"])
    spare = api_key_create(actor=SYSTEM, tenant=tenant, name=f"{title} spare", scopes=["gateway:Use"]).api_key
    check = ProviderCheck.objects.create(provider=provider, tenant=tenant, kind=ProviderCheck.Kind.TEST,
                                         state=ProviderCheck.State.DONE, ok=True, status="healthy",
                                         message=f"{title} check ok", task_id=uuid.uuid4().hex)
    usage = make_usage(tenant, caller.api_key, model, f"{marker}-alias")
    user = make_user(get_user_model(), f"{marker}-admin", tenant=tenant, role=TenantMembership.Role.ADMIN,
                     is_staff=True)
    return Side(
        label=f"tenant {marker}", marker=marker, tenant=tenant, token=caller.plaintext, tenant_id=str(tenant.pk),
        provider_id=provider.public_id, provider_pk=str(provider.pk), provider_name=provider.name,
        model_pk=model.pk, model_id=model.model_id, model_name=f"openai/{model.model_id}", username=user.username,
        provider_key_id=provider.keys.get().pk, api_key_id=spare.pk,
        api_key_prefix=caller.api_key.prefix, task_id=check.task_id,
        chat_names=[f"{marker}-alias", f"{marker}-chat-model", f"openai/{marker}-chat-model"],
        embedding_names=[f"{marker}-embed", f"{marker}-embed-model", f"openai/{marker}-embed-model"],
        upstream_keys=keys,
        identifiers=[marker, tenant.name, str(tenant.pk), tenant.pk.hex, provider.public_id, caller.api_key.prefix,
                     spare.prefix, check.task_id, f"...{tag}P1", f"...{tag}C1"],
        objects={"tenant": tenant, "provider": provider, "model": model, "credential": cred, "api_key": spare,
                 "check": check, "usage": usage, "user": user,
                 "audit_event": AuditEvent.objects.filter(tenant=tenant).order_by("id").first()},
    )


def make_usage(tenant, api_key, model, requested: str) -> UsageRecord:
    return usage_record_create(tenant=tenant, api_key=api_key, provider=model.provider, model=model,
                               requested_model=requested, endpoint="chat.completions", tokens_in=3,
                               tokens_out=5, latency_ms=40, status="ok", created_at=timezone.now())


@dataclass
class World:
    a: Side
    b: Side
    b_enabled: Side  # B's view of an instance-level provider and model enabled for B only (A may not see them)
    upstream_keys_of_b: list[str]


def build_world(tenant, other_tenant, upstream_url: str, *, a_credential: bool = True) -> World:
    # Instance level: one provider every tenant sees (a model of it is also enabled for B, explicitly), and one
    # whose model is enabled for B only.
    shared = make_provider(tenant=None, instance_wide=True, name="Instance OpenAI", base_url=upstream_url + "/v1",
                           api_key="sk-instance-shared-key-INS1",
                           models=[{"model_id": "shared-chat", "alias": "shared"}])
    provider_services.model_set_tenant_enabled(actor=SYSTEM, model=shared.models.get(), tenant=other_tenant,
                                               enabled=True)
    a = build_side(tenant, "acme", upstream_url, "AC", credential=a_credential)
    b = build_side(other_tenant, "zebra", upstream_url, "ZE")
    b_only = make_provider(tenant=None, name="Zebra-enabled instance provider", base_url=upstream_url + "/v1",
                           api_key="sk-instance-zebra-key-ZEI1", models=[{"model_id": "zebra-enabled-model"}])
    enabled_model = b_only.models.get()
    provider_services.model_set_tenant_enabled(actor=SYSTEM, model=enabled_model, tenant=other_tenant, enabled=True)
    b.identifiers.append(b_only.public_id)
    b.objects.update(enabled_provider=b_only, enabled_model=enabled_model)
    b_enabled = replace(b, label="an instance-level provider/model enabled for tenant zebra only",
                        provider_id=b_only.public_id, provider_pk=str(b_only.pk), model_pk=enabled_model.pk)
    return World(a=a, b=b, b_enabled=b_enabled, upstream_keys_of_b=b.upstream_keys + ["sk-instance-zebra-key-ZEI1"])


def tenant_rows(tenant: Tenant) -> dict[str, list]:
    """Every row that belongs to `tenant`, to prove that nothing of it changed (encrypted values compare by
    ciphertext)."""
    def rows(qs):
        return list(qs.order_by("pk").values())

    providers = Provider.objects.filter(tenant=tenant)
    models = AIModel.objects.filter(provider__tenant=tenant)
    return {
        "tenant": rows(Tenant.objects.filter(pk=tenant.pk)),
        "memberships": rows(TenantMembership.objects.filter(tenant=tenant)),
        "providers": rows(providers),
        "models": rows(models),
        "provider_keys": rows(ProviderKey.objects.filter(provider__tenant=tenant)),
        "credentials": rows(TenantCredential.objects.filter(tenant=tenant)),
        "api_keys": rows(TenantApiKey.objects.filter(tenant=tenant)),
        "checks": rows(ProviderCheck.objects.filter(Q(provider__tenant=tenant) | Q(tenant=tenant))),
        "usage": rows(UsageRecord.objects.filter(tenant=tenant)),
        "enablements": rows(TenantModelEnablement.objects.filter(tenant=tenant)),
        "audit": rows(AuditEvent.objects.filter(tenant=tenant)),
        "acl": rows(ProviderUserObjectPermission.objects.filter(content_object__in=providers))
        + rows(AIModelUserObjectPermission.objects.filter(content_object__in=models)),
    }


def leaked(text: str, side: Side, sent: list[str] = ()) -> list[str]:
    """B's identifiers found in a response. What the caller itself sent is cut out first: echoing the id or
    name it asked for leaks nothing (short values such as numeric ids are not cut, they are no identifiers)."""
    text = text.lower()
    for value in sent:
        if len(value) >= 6:
            text = text.replace(value.lower(), "")
    return [i for i in side.identifiers if i.lower() in text]


# --- 1. REST + /v1 matrix, generated from the OpenAPI schemas ------------------------------------------------

class Shared(str):
    """A path parameter that names no tenant's object (a provider type): the same value for every caller."""


# "<collection>/{<param>}" -> the Side attribute holding that tenant's value. Keyed by the collection too,
# because the same name can mean different things ({key_id} of /keys is a provider key, of /api-keys a
# tenant API key).
PATH_PARAMS: dict[str, str | Shared] = {
    "tenants/{tenant_id}": "tenant_id",
    "ai-providers/{provider_id}": "provider_id",
    "models/{model_pk}": "model_pk",
    "models/{model}": "model_name",
    "members/{username}": "username",
    "keys/{key_id}": "provider_key_id",
    "api-keys/{key_id}": "api_key_id",
    "tasks/{task_id}": "task_id",
    "credentials/{provider}": Shared("openai"),
    "provider-types/{provider_type}": Shared("openai"),
}

# Query parameter -> the Side attribute it references (lists are also called with B's value in it), or None
# for a parameter that references nothing (paging, flags, dates, enums).
QUERY_PARAMS: dict[str, str | None] = {
    "tenant_id": "tenant_id", "provider_id": "provider_id", "model": "model_id", "api_key_prefix": "api_key_prefix",
    "q": "provider_name", "target_id": "provider_pk",
    "limit": None, "offset": None, "force": None, "provider_type": None, "status": None, "health_status": None,
    "since": None, "until": None, "streamed": None, "action": None, "actor": None, "target_type": None,
    "source": None, "is_active": None, "cursor": None,
}

# "METHOD /path" -> bodies built from a Side. Operations with path parameters get a minimal valid body (the
# positive control proves it valid); those without put the other tenant's references in the body itself.
BODIES: dict[str, Callable[[Side], list[dict]]] = {
    "PUT /api/v1/sysadmin/tenants/{tenant_id}/credentials/{provider}":
        lambda s: [{"api_key": f"sk-{s.marker}-replaced-key-0000"}],
    "POST /api/v1/sysadmin/tenants/{tenant_id}/api-keys": lambda s: [{"name": f"{s.marker} new key", "scopes": ["*"]}],
    "POST /api/v1/sysadmin/tenants": lambda s: [{"name": f"{s.marker} new tenant", "slug": f"{s.marker}-new"}],
    "PATCH /api/v1/sysadmin/tenants/{tenant_id}": lambda s: [{"monthly_budget": "10.00"}],
    "PUT /api/v1/sysadmin/tenants/{tenant_id}/members/{username}": lambda s: [{"role": "admin"}],
    "POST /api/v1/ai-providers":
        lambda s: [{"name": f"{s.marker} created", "provider_type": "openai", "tenant_id": s.tenant_id}],
    "PATCH /api/v1/ai-providers/{provider_id}": lambda s: [{"rpm": 60}],
    "POST /api/v1/ai-providers/{provider_id}/models": lambda s: [{"model_id": f"{s.marker}-added-model"}],
    "PATCH /api/v1/ai-providers/{provider_id}/models/{model_pk}": lambda s: [{"display_label": "Renamed"}],
    "POST /api/v1/ai-providers/{provider_id}/keys": lambda s: [{"secret": f"sk-{s.marker}-added-key-0000"}],
    "PATCH /api/v1/ai-providers/{provider_id}/keys/{key_id}": lambda s: [{"label": "relabelled"}],
    "POST /v1/chat/completions": lambda s: [{"model": n, "messages": CHAT, "max_tokens": 5} for n in s.chat_names],
    "POST /v1/embeddings": lambda s: [{"model": n, "input": "hi"} for n in s.embedding_names],
    "POST /v1/completions": lambda s: [{"model": n, "prompt": "hi", "max_tokens": 5} for n in s.chat_names],
    "POST /v1/rerank": lambda s: [{"model": n, "query": "hi", "documents": ["a", "b"]} for n in s.embedding_names],
    "POST /v1/messages": lambda s: [{"model": n, "messages": CHAT, "max_tokens": 5} for n in s.chat_names],
    "POST /v1/responses": lambda s: [{"model": n, "input": "hi", "max_output_tokens": 16} for n in s.chat_names],
}

# Answers other than 404 for B's objects, with the reason. The ghost comparison still proves that they do not
# depend on whether B's object exists.
EXPECTED: dict[tuple[str, str], int] = {
    # A tenant key may never enable models; A's own model with any other tenant id is the same 403.
    ("POST /api/v1/ai-providers/{provider_id}/models/{model_pk}/tenants/{tenant_id}", "tenant_id"): 403,
    ("DELETE /api/v1/ai-providers/{provider_id}/models/{model_pk}/tenants/{tenant_id}", "tenant_id"): 403,
    # A tenant key creates in its own tenant only: any other tenant_id in the body is a 403.
    ("POST /api/v1/ai-providers", "body"): 403,
}

# Positive controls (A's own ids with A's key) answer 2xx, except:
POSITIVE_EXPECTED: dict[str, int] = {
    "POST /api/v1/ai-providers/{provider_id}/models/{model_pk}/tenants/{tenant_id}": 403,  # sysadmin only
    "DELETE /api/v1/ai-providers/{provider_id}/models/{model_pk}/tenants/{tenant_id}": 403,  # sysadmin only
    "DELETE /api/v1/ai-providers/{provider_id}": 409,  # it still has models (force not sent)
    # A's embedding models found, but not rerank models (model_type_mismatch); B's are 404 model_not_found
    "POST /v1/rerank": 400,
}

# Lists whose content belongs to no tenant (the positive control does not look for A's marker in them).
LISTS_WITHOUT_TENANT_DATA = {"GET /api/v1/provider-types", "GET /api/v1/provider-types/{provider_type}"}


@dataclass
class Operation:
    method: str
    path: str
    sysadmin_only: bool
    path_params: list[tuple[str, str | Shared]]  # (placeholder, Side attribute or Shared value)
    query_refs: list[tuple[str, str]]  # (query parameter, Side attribute)
    has_body: bool

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def tenant_params(self) -> list[tuple[str, str]]:
        return [(name, attr) for name, attr in self.path_params if not isinstance(attr, Shared)]

    def url(self, values: dict[str, Any]) -> str:
        url = self.path
        for name, attr in self.path_params:
            url = url.replace("{" + name + "}", urlquote(str(attr if isinstance(attr, Shared) else values[name])))
        return url


def operations() -> tuple[list[Operation], list[str]]:
    """Every operation of both APIs, and the problems (unknown parameters or bodies) found on the way."""
    from eneo_site.api import api
    from providers.gateway.api import openai_api

    ops, problems = [], []
    for schema in (api.get_openapi_schema(), openai_api.get_openapi_schema()):
        for path, methods in schema["paths"].items():
            for method, op in methods.items():
                security = op.get("security") or []
                schemes = {name for requirement in security for name in requirement}
                path_params, query_refs = [], []
                for param in op.get("parameters", []):
                    name, where = param["name"], param["in"]
                    if where == "path":
                        collection = path.split("{" + name + "}")[0].rstrip("/").rsplit("/", 1)[-1]
                        slot = f"{collection}/{{{name}}}"
                        if slot not in PATH_PARAMS:
                            problems.append(f"{method.upper()} {path}: unknown path parameter {slot!r}. Add it to "
                                            f"PATH_PARAMS in tests/test_isolation.py (the Side attribute holding a "
                                            f"tenant's object for it, or Shared(value) if it names no tenant's "
                                            f"object) and build that object in build_side().")
                            continue
                        path_params.append((name, PATH_PARAMS[slot]))
                    elif where == "query":
                        if name not in QUERY_PARAMS:
                            problems.append(f"{method.upper()} {path}: unknown query parameter {name!r}. Add it to "
                                            f"QUERY_PARAMS in tests/test_isolation.py (the Side attribute it "
                                            f"references, or None).")
                        elif QUERY_PARAMS[name]:
                            query_refs.append((name, QUERY_PARAMS[name]))
                    else:
                        problems.append(f"{method.upper()} {path}: parameter {name!r} in {where}: extend "
                                        f"tests/test_isolation.py to substitute {where} parameters.")
                operation = Operation(method=method.upper(), path=path, sysadmin_only=schemes == {"SuperApiKeyAuth"},
                                      path_params=path_params, query_refs=query_refs, has_body="requestBody" in op)
                if operation.has_body and operation.key not in BODIES:
                    problems.append(f"{operation.key}: no body for this operation. Add a minimal valid body to "
                                    f"BODIES in tests/test_isolation.py.")
                ops.append(operation)
    return ops, problems


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [str(value)] if value is not None else []


@dataclass
class Case:
    op: Operation
    name: str  # "all", a path parameter name, "body" or "query <param>" / "list"
    side: Side  # whose ids are substituted where the case says so
    url: str
    body: dict | None
    ghost_url: str
    ghost_body: dict | None
    expected: int | None  # None: a list (2xx, and no identifiers of B)
    sent: list[str] = field(default_factory=list)  # the values the caller put in (an echo of them leaks nothing)


def cases_for(op: Operation, a: Side, b_sides: list[Side]) -> list[Case]:
    cases: list[Case] = []
    a_values = {name: getattr(a, attr) for name, attr in op.tenant_params}
    if op.tenant_params:
        bodies = BODIES[op.key](a) if op.has_body else [None]
        for b in b_sides:
            ghost = ghost_of(b)
            names = ["all"] + ([name for name, _ in op.tenant_params] if len(op.tenant_params) > 1 else [])
            for case_name in names:
                chosen = [n for n, _ in op.tenant_params] if case_name == "all" else [case_name]
                values = {**a_values, **{n: getattr(b, attr) for n, attr in op.tenant_params if n in chosen}}
                ghosts = {**a_values, **{n: getattr(ghost, attr) for n, attr in op.tenant_params if n in chosen}}
                expected = 401 if op.sysadmin_only else EXPECTED.get((op.key, case_name), 404)
                for body in bodies:
                    cases.append(Case(op, case_name, b, op.url(values), body, op.url(ghosts), body, expected,
                                      strings(values) + strings(body)))
    elif op.has_body:
        b = b_sides[0]
        ghost = ghost_of(b)
        expected = 401 if op.sysadmin_only else EXPECTED.get((op.key, "body"), 404)
        for body, ghost_body in zip(BODIES[op.key](b), BODIES[op.key](ghost)):
            cases.append(Case(op, "body", b, op.url({}), body, op.url({}), ghost_body, expected, strings(body)))
    else:
        b = b_sides[0]
        url = op.url({})
        cases.append(Case(op, "list", b, url, None, url, None, 401 if op.sysadmin_only else None))
        for param, attr in op.query_refs:
            value = str(getattr(b, attr))
            cases.append(Case(op, f"query {param}", b, f"{url}?{param}={urlquote(value)}", None, url, None,
                              401 if op.sysadmin_only else None, [value]))
    unique, seen = [], set()
    for case in cases:
        fingerprint = (case.url, json.dumps(case.body, sort_keys=True))
        if fingerprint not in seen:
            seen.add(fingerprint)
            unique.append(case)
    return unique


class Http:
    def __init__(self, client: httpx.Client):
        self.client = client

    def send(self, method: str, url: str, *, token: str | None, body: dict | None = None) -> httpx.Response:
        """`token` goes in both auth headers a route may read; None = the super API key (sysadmin)."""
        headers = ({"Authorization": f"Bearer {token}", "X-API-Key": token} if token
                   else {"X-API-Key": settings.SUPER_API_KEY})
        return self.client.request(method, url, headers=headers, json=body)


def run_positive_controls(http: Http, ops: list[Operation], a: Side, before_deletes: Callable) -> list[str]:
    """A's own ids with A's key (the super key on sysadmin routes): 2xx (or POSITIVE_EXPECTED), never 404.

    Deletions run last, deepest path first, so that every route still finds its objects; the tenant itself goes
    last of all."""
    failures = []
    ordered = sorted(ops, key=lambda o: (o.method == "DELETE", o.key == "DELETE /api/v1/sysadmin/tenants/{tenant_id}",
                                         -o.path.count("/") if o.method == "DELETE" else 0))
    for i, op in enumerate(ordered):
        if op.method == "DELETE" and (i == 0 or ordered[i - 1].method != "DELETE"):
            before_deletes()
        values = {name: getattr(a, attr) for name, attr in op.tenant_params}
        for body in (BODIES[op.key](a) if op.has_body else [None]):
            r = http.send(op.method, op.url(values), token=None if op.sysadmin_only else a.token, body=body)
            expected = POSITIVE_EXPECTED.get(op.key)
            ok = r.status_code == expected if expected else 200 <= r.status_code < 300
            if not ok:
                failures.append(f"positive control {op.key} {body or ''} -> {r.status_code} {r.text[:200]}")
            elif op.method == "GET" and not op.tenant_params and op.key not in LISTS_WITHOUT_TENANT_DATA:
                if a.marker not in r.text.lower():
                    failures.append(f"positive control {op.key}: tenant {a.marker}'s own data is not listed")
    return failures


@pytest.fixture
def world(db, upstream, tenant, other_tenant):
    """Both tenants' data (with the live `gateway` requested first, committed so that the server sees it)."""
    w = build_world(tenant, other_tenant, upstream.url)
    upstream.reset()
    return w


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield Http(client)


def test_rest_and_v1_isolation_matrix(gateway, world, upstream, http):
    ops, problems = operations()
    assert not problems, "The isolation matrix cannot cover these operations:\n" + "\n".join(problems)
    a, b = world.a, world.b
    before = tenant_rows(b.tenant)

    cases = [case for op in ops for case in cases_for(op, a, [b, world.b_enabled])]
    failures = []
    for case in cases:
        r = http.send(case.op.method, case.url, token=a.token, body=case.body)
        where = f"{case.op.key} [{case.name}, {case.side.label}] {case.url} {case.body or ''}"
        if case.expected is None:
            if not 200 <= r.status_code < 300:
                failures.append(f"{where}: list answered {r.status_code} {r.text[:200]}")
        else:
            if r.status_code != case.expected:
                failures.append(f"{where}: expected {case.expected}, got {r.status_code} {r.text[:200]}")
            g = http.send(case.op.method, case.ghost_url, token=a.token, body=case.ghost_body)
            if g.status_code != r.status_code:
                failures.append(f"{where}: {r.status_code} for B's object but {g.status_code} for one that never "
                                f"existed: the answer reveals that B's object exists")
        found = leaked(r.text, world.b, case.sent)
        if found:
            failures.append(f"{where}: tenant B's identifiers {found} in the response {r.text[:300]}")
    assert not failures, f"{len(failures)} of {len(cases)} isolation cases failed:\n" + "\n".join(failures)
    assert tenant_rows(b.tenant) == before, "tenant B's rows changed"
    assert not set(upstream.keys_seen()) & set(world.upstream_keys_of_b), "B's key reached the upstream"

    # The gateway's usage is written before anything is deleted: providers/gateway/usage.py drops a whole batch when
    # one of its rows refers to a model deleted in the meantime.
    failures = run_positive_controls(http, ops, a, before_deletes=gateway.flush_usage)
    assert not failures, "\n".join(failures)
    assert tenant_rows(b.tenant) == before, "tenant B's rows changed"
    seen = set(upstream.keys_seen())
    assert not seen & set(world.upstream_keys_of_b), f"B's key reached the upstream: {seen}"
    assert seen and all("-acme-" in key for key in seen), seen  # the positive controls reached it, with A's keys
    print(f"\nisolation matrix: {len(ops)} operations, {len(cases)} cases (+ ghost and positive controls)")


# --- 2. /v1: naming another tenant's model, with and without a credential of one's own ------------------------

@pytest.mark.parametrize("strict", [True, False], ids=["strict", "shared"])
def test_v1_never_uses_another_tenants_model_or_credential(gateway, upstream, http, settings, tenant, other_tenant,
                                                            strict):
    settings.TENANT_CREDENTIALS_ENABLED = strict
    world = build_world(tenant, other_tenant, upstream.url, a_credential=False)  # only B has an openai credential
    b = world.b
    # B also has a model with the same id and alias as the instance-level one A may use.
    make_model(b.objects["provider"], model_id="shared-chat", alias="shared")
    upstream.reset()

    for path, names in (("/v1/chat/completions", b.chat_names), ("/v1/embeddings", b.embedding_names)):
        for name in names:
            body = {"model": name, "messages": CHAT} if "chat" in path else {"model": name, "input": "hi"}
            r = http.send("POST", path, token=world.a.token, body=body)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", (name, r.text)
            assert not leaked(r.text, b, [name]), r.text
    models = http.send("GET", "/v1/models", token=world.a.token)
    assert models.status_code == 200 and not leaked(models.text, b), models.text

    # The instance-level model (same id and alias as B's): in shared mode the instance key, in strict mode a
    # clear "no credential" error. Never B's provider key or B's credential.
    for name in ("shared", "shared-chat", "openai/shared-chat"):
        r = http.send("POST", "/v1/chat/completions", token=world.a.token,
                      body={"model": name, "messages": CHAT, "max_tokens": 5})
        if strict:
            assert r.status_code == 403 and r.json()["error"]["code"] == "credential_missing", r.text
        else:
            assert r.status_code == 200, r.text
        assert not leaked(r.text, b, [name]), r.text
    seen = upstream.keys_seen()
    assert not set(seen) & set(world.upstream_keys_of_b), seen
    assert seen == ([] if strict else ["sk-instance-shared-key-INS1"] * 3)


# --- 3. Admin matrix, generated from admin.site._registry --------------------------------------------------------

@dataclass
class AdminData:
    obj: Callable[[Side], Any]  # the tenant's object of this model
    more: Callable[[Side, int], Any]  # one more object of this model for the tenant (n = 0, 1, ...)
    also: tuple[str, ...] = ()  # keys of Side.objects with further objects only this tenant may see

    def all(self, side: Side) -> list:
        return [self.obj(side)] + [side.objects[key] for key in self.also if key in side.objects]


def _more_tenant(side: Side, n: int):
    extra = tenant_create(actor=SYSTEM, name=f"{side.marker.capitalize()} extra {n}", slug=f"{side.marker}-extra-{n}")
    TenantMembership.objects.create(user=side.objects["user"], tenant=extra, role=TenantMembership.Role.ADMIN)
    return extra


ADMIN_OBJECTS: dict[str, AdminData] = {
    "tenants.Tenant": AdminData(lambda s: s.objects["tenant"], _more_tenant),
    "tenants.AuditEvent": AdminData(
        lambda s: s.objects["audit_event"],
        lambda s, n: audit_record(actor=SYSTEM, action="test.event", target=s.objects["provider"],
                                  tenant=s.objects["tenant"])),
    "tenants.TenantApiKey": AdminData(
        lambda s: s.objects["api_key"],
        lambda s, n: api_key_create(actor=SYSTEM, tenant=s.objects["tenant"], name=f"{s.marker} more {n}",
                                    scopes=["*"]).api_key),
    "credentials.TenantCredential": AdminData(
        lambda s: s.objects["credential"],
        lambda s, n: credential_set(actor=SYSTEM, tenant=s.objects["tenant"], provider_type=["anthropic", "groq"][n],
                                    api_key=f"sk-{s.marker}-more-cred-{n}000")),
    "providers.Provider": AdminData(
        lambda s: s.objects["provider"],
        lambda s, n: make_provider(tenant=s.objects["tenant"], name=f"{s.marker} more {n}",
                                   api_key=f"sk-{s.marker}-more-key-{n}000", models=[{"model_id": f"more-{n}"}]),
        also=("enabled_provider",)),
    "providers.AIModel": AdminData(lambda s: s.objects["model"],
                                   lambda s, n: make_model(s.objects["provider"], model_id=f"{s.marker}-more-{n}"),
                                   also=("enabled_model",)),
    "providers.UsageRecord": AdminData(
        lambda s: s.objects["usage"],
        lambda s, n: make_usage(s.objects["tenant"], None, s.objects["model"], f"{s.marker}-more-{n}")),
}

# Registered models that hold no tenant's data, with the reason they are not in the matrix.
ADMIN_ALLOW_LIST: dict[str, str] = {
    "auth.User": "instance-level accounts; whoever holds auth.change_user can change any account, so only "
                 "superusers should hold it",
    "auth.Group": "instance-level groups (ACL grantees); same as users",
    "django_celery_beat.PeriodicTask": "instance-level schedules (the health-check fan-out); no tenant data",
    "django_celery_beat.IntervalSchedule": "schedule definitions; no tenant data",
    "django_celery_beat.CrontabSchedule": "schedule definitions; no tenant data",
    "django_celery_beat.SolarSchedule": "schedule definitions; no tenant data",
    "django_celery_beat.ClockedSchedule": "schedule definitions; no tenant data",
    "axes.AccessAttempt": "instance-level login lockout records (username, IP); only superusers should hold axes "
                          "permissions",
    "axes.AccessLog": "instance-level login log; same as AccessAttempt",
    "axes.AccessFailureLog": "instance-level failed-login log; same as AccessAttempt",
}

OBJECT_ID = "<path:object_id>"


def tenant_admin(side: Side):
    """Tenant `side`'s admin user: staff, TenantMembership role admin, and every model-level permission."""
    user = side.objects["user"]
    user.user_permissions.set(Permission.objects.all())
    return get_user_model().objects.get(pk=user.pk)  # no cached permissions


def scoped_admins() -> tuple[list[tuple[str, Any]], list[str]]:
    admins, problems = [], []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        if label in ADMIN_ALLOW_LIST:
            continue
        if label not in ADMIN_OBJECTS:
            problems.append(f"admin for {label}: no data factory. Add an AdminData to ADMIN_OBJECTS in "
                            f"tests/test_isolation.py (the tenant's object, and how to make one more), or the "
                            f"model to ADMIN_ALLOW_LIST with the reason it holds no tenant data.")
            continue
        for pattern in model_admin.get_urls():
            route = str(pattern.pattern)
            if "<" in route and OBJECT_ID not in route:
                problems.append(f"admin for {label}: URL {route!r} takes an id the matrix cannot fill; extend "
                                f"tests/test_isolation.py.")
        admins.append((label, model_admin))
    return admins, problems


def admin_request(user, path="/admin/"):
    request = RequestFactory().get(path)
    request.user = user
    return request


def test_admin_isolation_matrix(client, world, upstream):
    a, b = world.a, world.b
    admins, problems = scoped_admins()
    assert not problems, "\n".join(problems)
    user = tenant_admin(a)
    client.force_login(user)
    before = tenant_rows(b.tenant)
    failures = []
    checked = 0

    for label, model_admin in admins:
        opts = model_admin.opts
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        mine, theirs_all = ADMIN_OBJECTS[label].obj(a), ADMIN_OBJECTS[label].all(b)

        r = client.get(changelist)
        checked += 1
        if r.status_code != 200:
            failures.append(f"{label} changelist: {r.status_code}")
        elif f"/{quote(str(mine.pk))}/change/" not in r.content.decode():
            failures.append(f"{label} changelist: tenant A's own object is not listed")
        if found := leaked(r.content.decode(), b):
            failures.append(f"{label} changelist lists tenant B's {found}")
        add = client.get(changelist + "add/", follow=True)
        if found := leaked(add.content.decode(), b):
            failures.append(f"{label} add page shows tenant B's {found}")

        # Every URL of the admin that takes an object id: B's is a 404 (GET and POST), A's is not.
        for pattern in model_admin.get_urls():
            route = str(pattern.pattern)
            if OBJECT_ID not in route:
                continue
            for theirs, method in itertools.product(theirs_all, ("get", "post")):
                url = changelist + route.replace(OBJECT_ID, quote(str(theirs.pk)))
                data = {"post": "yes", "apply": "1"} if method == "post" else None
                r = getattr(client, method)(url, data, follow=True)
                checked += 1
                if r.status_code != 404:
                    failures.append(f"{label} {method.upper()} {url} (tenant B's {theirs!r}): {r.status_code}, "
                                    f"expected 404")
            own = client.get(changelist + route.replace(OBJECT_ID, quote(str(mine.pk))), follow=True)
            if own.status_code in (404, 500):
                failures.append(f"{label} GET {route} with tenant A's own object: {own.status_code} (positive "
                                f"control: the URL must work)")

        # Every object A's admin can open: its page never shows B's identifiers (inlines, readonly fields).
        for obj in model_admin.get_queryset(admin_request(user))[:30]:
            page = client.get(changelist + f"{quote(str(obj.pk))}/change/")
            checked += 1
            if found := leaked(page.content.decode(), b):
                failures.append(f"{label} page of {obj!r} shows tenant B's {found}")

        # Actions on the list with B's object selected: nothing happens to it, nothing of it is shown.
        for action in model_admin.get_actions(admin_request(user, changelist)):
            r = client.post(changelist, {"action": action, "_selected_action": [str(o.pk) for o in theirs_all],
                                         "index": "0", "post": "yes", "apply": "1"}, follow=True)
            checked += 1
            if found := leaked(r.content.decode(), b):
                failures.append(f"{label} action {action} on tenant B's object shows {found}")

    assert not failures, f"{len(failures)} admin isolation failures:\n" + "\n".join(failures)
    assert tenant_rows(b.tenant) == before, "tenant B's rows changed"
    assert not set(upstream.keys_seen()) & set(world.upstream_keys_of_b)
    print(f"\nadmin matrix: {len(admins)} admins, {checked} requests")


def test_admin_list_pages_run_a_constant_number_of_queries(client, world):
    a = world.a
    admins, problems = scoped_admins()
    assert not problems, "\n".join(problems)
    client.force_login(tenant_admin(a))

    def count(url):
        client.get(url)  # warm: session, content types
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx.captured_queries)

    urls = {label: reverse(f"admin:{m.opts.app_label}_{m.opts.model_name}_changelist") for label, m in admins}
    before = {label: count(url) for label, url in urls.items()}
    for label, _ in admins:
        for n in range(2):
            ADMIN_OBJECTS[label].more(a, n)
    after = {label: count(url) for label, url in urls.items()}
    assert after == before, {label: (before[label], after[label]) for label in urls if before[label] != after[label]}


def test_superuser_sees_every_tenant_in_admin(admin_client, world):
    """The scoping applies to tenant admins; superusers (sysadmins) still see and open everything."""
    b = world.b
    admins, _ = scoped_admins()
    for label, model_admin in admins:
        opts = model_admin.opts
        for theirs in ADMIN_OBJECTS[label].all(b):
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(str(theirs.pk))])
            assert admin_client.get(url).status_code == 200, (label, theirs)

