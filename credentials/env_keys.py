"""The global provider keys of the environment (OPENAI_API_KEY, ...): their variable names, and the values set now.

Its own module, importing nothing of the app: credential resolution (which may use them) and the log masking
filter (which hides them) both need it, and neither may import the other at import time.
"""
from __future__ import annotations

import os

# provider type -> (key variable, base-url variable, api-version variable, deployment variable)
GLOBAL_ENV = {
    "openai": ("OPENAI_API_KEY", "OPENAI_API_BASE", None, None),
    "azure": ("AZURE_API_KEY", "AZURE_API_BASE", "AZURE_API_VERSION", "AZURE_DEPLOYMENT_NAME"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_API_BASE", None, None),
    "mistral": ("MISTRAL_API_KEY", "MISTRAL_API_BASE", None, None),
    "gemini": ("GEMINI_API_KEY", None, None, None),
    "hosted_vllm": ("VLLM_API_KEY", "VLLM_MODEL_URL", None, None),
    "berget": ("BERGET_API_KEY", "BERGET_API_BASE", None, None),
    "ovhcloud": ("OVHCLOUD_API_KEY", "OVHCLOUD_API_BASE", None, None),
}


def env_names(provider_type: str):
    if provider_type in GLOBAL_ENV:
        return GLOBAL_ENV[provider_type]
    upper = provider_type.upper().replace("-", "_")
    return (f"{upper}_API_KEY", f"{upper}_API_BASE", None, None)


def global_env_secrets() -> list[str]:
    """Every global provider key currently set (for the log masking filter)."""
    names = {v[0] for v in GLOBAL_ENV.values()}
    names.update(k for k in os.environ if k.endswith("_API_KEY"))
    return [os.environ[n] for n in names if os.environ.get(n)]
