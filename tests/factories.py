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
