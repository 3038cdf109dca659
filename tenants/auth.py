"""Sysadmin authentication for /api/v1/sysadmin: the super API key in X-API-Key, compared in constant time."""
from __future__ import annotations

import hmac

from django.conf import settings
from ninja.security import APIKeyHeader

from .actors import Actor


class SuperApiKeyAuth(APIKeyHeader):
    param_name = "X-API-Key"

    def authenticate(self, request, key: str | None):
        expected = settings.SUPER_API_KEY
        if not expected or not key:
            return None
        if hmac.compare_digest(key.encode(), expected.encode()):
            return Actor(name="super-api-key", source="api", ip=request.META.get("REMOTE_ADDR"), is_sysadmin=True)
        return None


super_api_key = SuperApiKeyAuth()


# --- Tenant API keys (REST and /v1) -------------------------------------------------------------------
from ninja.security import HttpBearer  # noqa: E402

from .api_keys import api_key_check  # noqa: E402


class TenantKeyBearer(HttpBearer):
    """`Authorization: Bearer eneo_...` -> the TenantApiKey (request.auth), or 401."""

    def authenticate(self, request, token):
        return api_key_check(token)


class TenantKeyHeader(APIKeyHeader):
    """`X-API-Key: eneo_...` -> the TenantApiKey, or the sysadmin Actor for the super key."""

    param_name = "X-API-Key"

    def authenticate(self, request, key):
        if key and key.startswith("eneo_"):
            return api_key_check(key)
        return SuperApiKeyAuth.authenticate(self, request, key)


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
