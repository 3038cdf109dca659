"""Which provider types exist and which credential fields each needs.

The list of types comes from LiteLLM itself (`litellm.provider_list`), so every LiteLLM provider is
accepted without code changes, plus a few OpenAI-compatible services LiteLLM does not name.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

# OpenAI-compatible services that LiteLLM has no name for: called as openai/<model> at their base URL.
EXTRA_OPENAI_COMPATIBLE = {
    "berget": "https://api.berget.ai/v1",
}

ALIASES = {"vllm": "hosted_vllm"}


@dataclass(frozen=True)
class CredentialRequirements:
    provider_type: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    note: str = ""

    def describe(self) -> str:
        text = f"provider '{self.provider_type}' requires: {', '.join(self.required)}"
        if self.optional:
            text += f"; optional: {', '.join(self.optional)}"
        return text + (f". {self.note}" if self.note else "")


_SPECIAL = {
    "azure": CredentialRequirements("azure", ("api_key", "endpoint", "api_version", "deployment_name"), ()),
    "hosted_vllm": CredentialRequirements(
        "hosted_vllm", ("api_key",), ("endpoint",), "Without an endpoint, VLLM_MODEL_URL is used."
    ),
}


@functools.lru_cache(maxsize=1)
def provider_types() -> tuple[str, ...]:
    import litellm  # imported late: it is large

    names = {p.value for p in litellm.provider_list} | set(EXTRA_OPENAI_COMPATIBLE)
    names -= set(ALIASES)  # an alias is accepted as input but stored under its target
    return tuple(sorted(names))


class UnknownProviderType(ValueError):
    def __init__(self, given: str):
        self.given = given
        super().__init__(
            f"Unknown provider type '{given[:60]}'. Valid types: {', '.join(provider_types())}"
        )


def normalise_provider_type(name: str) -> str:
    """Lower-case, trimmed, aliases resolved (vllm -> hosted_vllm). Raises UnknownProviderType."""
    key = (name or "").strip().lower()
    key = ALIASES.get(key, key)
    if key not in provider_types():
        raise UnknownProviderType(name or "")
    return key


def requirements_for(provider_type: str) -> CredentialRequirements:
    return _SPECIAL.get(
        provider_type, CredentialRequirements(provider_type, ("api_key",), ("endpoint", "api_version", "deployment_name"))
    )


def missing_fields(provider_type: str, values: dict) -> list[str]:
    req = requirements_for(provider_type)
    return [f for f in req.required if not (values.get(f) or "").strip()]
