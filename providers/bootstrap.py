"""Instance-level providers defined by environment variables, created or updated at boot, never duplicated.

The key itself stays in the environment (it is not copied into the database): calls fall back to it through
credential resolution (shared mode). Models come from `<PREFIX>_MODELS` (comma-separated), plus
AZURE_DEPLOYMENT_NAME for Azure and VLLM_MODEL_NAME for vLLM.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from django.db import transaction

from credentials.resolution import global_env_credential
from tenants.actors import Actor

from providers.models import AIModel, Provider
from providers.services import model_create, provider_create, provider_update


@dataclass(frozen=True)
class EnvProvider:
    provider_type: str
    name: str
    models_var: str
    extra_model_var: str | None = None


ENV_PROVIDERS = (
    EnvProvider("openai", "OpenAI (environment)", "OPENAI_MODELS"),
    EnvProvider("azure", "Azure OpenAI (environment)", "AZURE_MODELS", "AZURE_DEPLOYMENT_NAME"),
    EnvProvider("anthropic", "Anthropic (environment)", "ANTHROPIC_MODELS"),
    EnvProvider("mistral", "Mistral (environment)", "MISTRAL_MODELS"),
    EnvProvider("gemini", "Gemini (environment)", "GEMINI_MODELS"),
    EnvProvider("berget", "Berget (environment)", "BERGET_MODELS"),
    EnvProvider("ovhcloud", "OVHcloud (environment)", "OVHCLOUD_MODELS"),
    EnvProvider("hosted_vllm", "vLLM (environment)", "VLLM_MODELS", "VLLM_MODEL_NAME"),
)


def _model_ids(spec: EnvProvider) -> list[str]:
    ids = [m.strip() for m in os.environ.get(spec.models_var, "").split(",") if m.strip()]
    if spec.extra_model_var and os.environ.get(spec.extra_model_var, "").strip():
        ids.append(os.environ[spec.extra_model_var].strip())
    return list(dict.fromkeys(ids))


@transaction.atomic
def ensure_env_providers(*, actor: Actor) -> list[tuple[str, str]]:
    """Returns (provider name, created|updated|unchanged) for each provider the environment defines."""
    results = []
    for spec in ENV_PROVIDERS:
        resolved = global_env_credential(spec.provider_type)
        if resolved is None:
            continue
        fields = {"base_url": (resolved.api_base or "").rstrip("/"), "api_version": resolved.api_version or ""}
        provider = Provider.objects.filter(env_source=spec.provider_type).first()
        if provider is None:
            provider = provider_create(actor=actor, tenant=None, name=spec.name, provider_type=spec.provider_type,
                                       instance_wide=True, **fields)
            Provider.objects.filter(pk=provider.pk).update(env_source=spec.provider_type)
            outcome = "created"
        else:
            changed = {k: v for k, v in fields.items() if getattr(provider, k) != v}
            if changed:
                provider_update(actor=actor, provider=provider, **changed)
            outcome = "updated" if changed else "unchanged"
        existing = set(AIModel.objects.filter(provider=provider).values_list("model_id", flat=True))
        for model_id in _model_ids(spec):
            if model_id not in existing:
                model_create(actor=actor, provider=provider, model_id=model_id)
                outcome = "updated" if outcome == "unchanged" else outcome
        results.append((provider.name, outcome))
    return results
