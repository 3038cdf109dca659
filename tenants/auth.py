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
