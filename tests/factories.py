"""Plain builder functions for tests (each goes through the real services)."""
from __future__ import annotations

import itertools

from providers import services
from tenants.actors import SYSTEM

_seq = itertools.count(1)


def make_provider(**overrides):
    n = next(_seq)
    kwargs = {
        "actor": SYSTEM, "tenant": None, "name": f"Provider {n}", "provider_type": "openai",
        "api_key": f"sk-provider-key-{n:06d}",
    }
    kwargs.update(overrides)
    return services.provider_create(**kwargs)


# Instance-wide providers of the common wire formats at the fake upstream, with the keys the tests look for.
UPSTREAM_PROVIDERS = {
    "openai": {"name": "OpenAI", "provider_type": "openai", "path": "/v1", "api_key": "sk-provider-openai-0001"},
    "azure": {"name": "Azure", "provider_type": "azure", "path": "", "api_key": "az-provider-key-0002",
              "api_version": "2024-06-01"},
    "anthropic": {"name": "Anthropic", "provider_type": "anthropic", "path": "", "api_key": "ant-provider-key-0003"},
}


def upstream_provider(upstream, kind: str, **overrides):
    """An instance-wide `kind` provider (openai, azure, anthropic) at the fake upstream."""
    spec = {**UPSTREAM_PROVIDERS[kind], **overrides}
    path = spec.pop("path")
    return make_provider(tenant=None, instance_wide=True, base_url=upstream.url + path, **spec)


def make_model(provider, **overrides):
    n = next(_seq)
    kwargs = {"actor": SYSTEM, "provider": provider, "model_id": f"model-{n}"}
    kwargs.update(overrides)
    return services.model_create(**kwargs)


def make_user(django_user_model, username, *, tenant=None, role="member", **extra):
    user = django_user_model.objects.create_user(username, password="pw-" + username + "-123", **extra)
    if tenant is not None:
        from tenants.models import TenantMembership

        TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    return user


def usage_record_create(**fields):
    """A UsageRecord written straight to the table (not through the gateway's writer), with its hour's roll-ups
    rebuilt as the writer would have kept them."""
    from providers.models import UsageRecord
    from providers.rollups import rollups_rebuild

    row = UsageRecord.objects.create(**fields)
    rollups_rebuild(since=row.created_at, until=row.created_at)
    return row
