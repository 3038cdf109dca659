"""Model discovery for the add-provider wizard: the ids a server lists at GET {base_url}/models.

OpenAI-compatible servers answer {"data": [{"id": ...}, ...]} with a Bearer key; Anthropic answers at /v1/models
with x-api-key and anthropic-version. A base URL ending in /v1 never gets a second /v1. Every failure becomes a
short, masked message (never an exception, never the key).
"""
from __future__ import annotations

from dataclasses import dataclass

import httpx
from django.conf import settings

from credentials.masking import mask_text, secret_scope

MAX_IDS = 2000


@dataclass(frozen=True)
class Discovery:
    ids: tuple[str, ...] = ()
    error: str = ""


def models_url(provider_type: str, base_url: str) -> str:
    base = base_url.rstrip("/")
    if provider_type == "anthropic" and not base.endswith("/v1"):
        base += "/v1"
    return base + "/models"


def _headers(provider_type: str, api_key: str) -> dict:
    if provider_type == "anthropic":
        return {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _ids(payload) -> list[str]:
    items = payload.get("data", payload.get("models")) if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise ValueError("not a model list")
    ids = []
    for item in items[:MAX_IDS]:
        value = item.get("id") if isinstance(item, dict) else item
        if isinstance(value, str) and value.strip():
            ids.append(value.strip()[:200])
    return sorted(set(ids))


def discover_model_ids(*, provider_type: str, base_url: str, api_key: str = "") -> Discovery:
    url = models_url(provider_type, base_url)
    timeout = getattr(settings, "PROVIDER_DISCOVERY_TIMEOUT", 5.0)

    def failed(reason: str) -> Discovery:
        return Discovery(error=mask_text(f"Could not list the models at {url}: {reason}."))

    with secret_scope(api_key):
        try:
            response = httpx.get(url, headers=_headers(provider_type, api_key), timeout=timeout,
                                 follow_redirects=False)
        except httpx.TimeoutException:
            return failed(f"no answer within {timeout:g} s")
        except httpx.HTTPError:
            return failed("could not connect to the API")
        if response.status_code in (401, 403):
            return failed(f"invalid API key (HTTP {response.status_code})")
        if response.status_code != 200:
            return failed(f"HTTP {response.status_code}")
        try:
            ids = _ids(response.json())
        except ValueError:
            return failed("the answer is not a model list")
    return Discovery(ids=tuple(ids)) if ids else failed("the server lists no models")
