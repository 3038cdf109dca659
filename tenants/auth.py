"""Sysadmin authentication for /api/v1/sysadmin: the super API key in X-API-Key, compared in constant time.

Every key that is presented and rejected counts against the client address (tenants.throttle); an address
locked out by too many failures is answered 429 before these classes run (AuthFailureThrottleMiddleware).
"""
from __future__ import annotations

import hmac

from django.conf import settings
from ninja.security import APIKeyHeader

from .actors import Actor
from .throttle import client_address, record_auth_failure


class SuperApiKeyAuth(APIKeyHeader):
    param_name = "X-API-Key"

    def authenticate(self, request, key: str | None):
        actor = _super_key_actor(request, key)
        if actor is None and key:
            record_auth_failure(request)
        return actor


def _super_key_actor(request, key: str | None, *, ip: str | None = None, source: str = "api") -> Actor | None:
    expected = settings.SUPER_API_KEY
    if not expected or not key:
        return None
    if hmac.compare_digest(key.encode(), expected.encode()):
        return Actor(name="super-api-key", source=source, ip=ip if request is None else client_address(request),
                     is_sysadmin=True)
    return None


def key_principal(token: str, *, ip: str | None, source: str):
    """The principal behind a presented key, outside ninja (MCP): the tenant API key, or the sysadmin Actor for the
    super key; None when it is neither."""
    if token.startswith("eneo_"):
        return api_key_check(token)
    return _super_key_actor(None, token, ip=ip, source=source)


super_api_key = SuperApiKeyAuth()


# --- Tenant API keys (REST and /v1) -------------------------------------------------------------------
from ninja.security import HttpBearer  # noqa: E402

from .api_keys import api_key_check  # noqa: E402


class TenantKeyBearer(HttpBearer):
    """`Authorization: Bearer eneo_...` -> the TenantApiKey (request.auth), or 401."""

    def authenticate(self, request, token):
        api_key = api_key_check(token)
        if api_key is None and token:
            record_auth_failure(request)
        return api_key


class TenantKeyHeader(APIKeyHeader):
    """`X-API-Key: eneo_...` -> the TenantApiKey, or the sysadmin Actor for the super key."""

    param_name = "X-API-Key"

    def authenticate(self, request, key):
        principal = api_key_check(key) if key and key.startswith("eneo_") else _super_key_actor(request, key)
        if principal is None and key:
            record_auth_failure(request)
        return principal


tenant_key_auth = [TenantKeyBearer(), TenantKeyHeader()]


def login_locked_out(request, credentials, *args, **kwargs):
    """django-axes lockout response: 429 with a plain explanation (no account details)."""
    from django.conf import settings
    from django.http import HttpResponse

    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return HttpResponse(
        f"Too many failed login attempts for this user from your address. Try again in {minutes} minutes, or ask "
        "an administrator to reset the lockout (python manage.py axes_reset_username <name>).",
        status=429, content_type="text/plain; charset=utf-8", headers={"Retry-After": str(minutes * 60)})
