"""Provider-type registry, built from LiteLLM itself (its provider list and local model cost map).

Every LiteLLM provider is a selectable type without code changes. A few types get a richer spec (labels,
fields, default base URL, whether the server lists its models at GET {base}/models).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Decimal

from credentials.provider_rules import EXTRA_OPENAI_COMPATIBLE, SELF_HOSTED, FieldSpec, provider_types, type_fields


@dataclass(frozen=True)
class KnownModel:
    model_id: str
    model_type: str  # inference | embedding | rerank
    context_window: int | None
    max_output_tokens: int | None
    supports_vision: bool
    supports_tools: bool
    supports_reasoning: bool
    supports_json_mode: bool
    supports_system_prompt: bool
    input_cost_per_million: Decimal | None
    output_cost_per_million: Decimal | None


@dataclass(frozen=True)
class ProviderTypeSpec:
    key: str
    label: str
    litellm_prefix: str
    fields: tuple[FieldSpec, ...]
    lists_models: bool  # OpenAI-compatible GET {base}/models (or Anthropic's /v1/models)
    default_base_url: str = ""
    models_entered_by_deployment: bool = False
    notes: str = ""
    test_models: tuple[str, ...] = field(default_factory=tuple)

    @property
    def sensitive_parameters(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.secret)

    def known_models(self) -> list[KnownModel]:
        return _known_models(self.key)


_LABELS = {
    "openai": "OpenAI", "azure": "Azure OpenAI", "anthropic": "Anthropic", "mistral": "Mistral AI",
    "gemini": "Google Gemini", "vertex_ai": "Google Vertex AI", "bedrock": "AWS Bedrock",
    "hosted_vllm": "vLLM (self-hosted)", "ollama": "Ollama (self-hosted)", "ollama_chat": "Ollama chat (self-hosted)",
    "openai_like": "OpenAI-compatible server", "berget": "Berget AI", "ovhcloud": "OVHcloud AI Endpoints",
    "groq": "Groq", "cohere": "Cohere", "together_ai": "Together AI", "deepseek": "DeepSeek",
    "lm_studio": "LM Studio (self-hosted)", "xai": "xAI", "scaleway": "Scaleway",
}
_LISTS_MODELS = {"openai", "hosted_vllm", "openai_like", "lm_studio", "llamafile", "custom_openai", "mistral",
                 "groq", "together_ai", "deepseek", "xai", "ovhcloud", "scaleway", "berget", "anthropic",
                 "litellm_proxy", "lemonade", "docker_model_runner", "fireworks_ai", "deepinfra", "nebius"}
_TEST_MODELS = {
    "openai": ("gpt-4o-mini", "gpt-3.5-turbo"),
    "anthropic": ("claude-3-5-haiku-20241022", "claude-3-haiku-20240307"),
    "mistral": ("mistral-small-latest",),
    "gemini": ("gemini-1.5-flash",),
}
# LiteLLM cost-map providers that belong to a type (besides the exact name).
_COST_MAP_ALIASES = {"bedrock": ("bedrock_converse",), "vertex_ai": ("vertex_ai-",), "fireworks_ai": ("fireworks_ai-",)}


@functools.lru_cache(maxsize=None)
def get_spec(key: str) -> ProviderTypeSpec:
    if key not in provider_types():
        raise KeyError(key)
    prefix = "openai" if key in EXTRA_OPENAI_COMPATIBLE else key
    return ProviderTypeSpec(
        key=key,
        label=_LABELS.get(key, key.replace("_", " ").title()),
        litellm_prefix=prefix,
        fields=type_fields(key),
        lists_models=key in _LISTS_MODELS,
        default_base_url=EXTRA_OPENAI_COMPATIBLE.get(key, ""),
        models_entered_by_deployment=key == "azure",
        notes=(
            "Azure's model list is not its deployment list: enter each deployment name as a model." if key == "azure"
            else "Models are discovered from the server's /models endpoint." if key in SELF_HOSTED else ""
        ),
        test_models=_TEST_MODELS.get(key, ()),
    )


def litellm_model_name(provider_type: str, model_id: str) -> str:
    """The LiteLLM model string: <prefix>/<model id>, e.g. azure/gpt4o-prod (berget: openai/...)."""
    return f"{get_spec(provider_type).litellm_prefix}/{model_id}"


def all_specs() -> list[ProviderTypeSpec]:
    return [get_spec(k) for k in provider_types()]


def _model_type(mode: str | None) -> str | None:
    return {"chat": "inference", "completion": "inference", "responses": "inference",
            "embedding": "embedding", "rerank": "rerank"}.get(mode or "")


def _per_million(value) -> Decimal | None:
    if value in (None, ""):
        return None
    return (Decimal(str(value)) * 1_000_000).quantize(Decimal("0.0001"))


@functools.lru_cache(maxsize=None)
def _known_models_index() -> dict[str, list[KnownModel]]:
    import litellm

    index: dict[str, dict[str, KnownModel]] = {}
    types = set(provider_types())
    for name, info in litellm.model_cost.items():
        provider = info.get("litellm_provider") or ""
        mtype = _model_type(info.get("mode"))
        if not provider or mtype is None or name == "sample_spec":
            continue
        owner = provider if provider in types else None
        if owner is None:
            for type_key, extras in _COST_MAP_ALIASES.items():
                if any(provider == e or (e.endswith("-") and provider.startswith(e)) for e in extras):
                    owner = type_key
                    break
        if owner is None:
            continue
        model_id = name.split("/", 1)[1] if name.startswith(f"{provider}/") or name.startswith(f"{owner}/") else name
        index.setdefault(owner, {})[model_id] = KnownModel(
            model_id=model_id,
            model_type=mtype,
            context_window=info.get("max_input_tokens"),
            max_output_tokens=info.get("max_output_tokens"),
            supports_vision=bool(info.get("supports_vision")),
            supports_tools=bool(info.get("supports_function_calling")),
            supports_reasoning=bool(info.get("supports_reasoning")),
            supports_json_mode=bool(info.get("supports_response_schema")),
            supports_system_prompt=info.get("supports_system_messages", True) is not False,
            input_cost_per_million=_per_million(info.get("input_cost_per_token")),
            output_cost_per_million=_per_million(info.get("output_cost_per_token")),
        )
    return {k: sorted(v.values(), key=lambda m: m.model_id) for k, v in index.items()}


def _known_models(key: str) -> list[KnownModel]:
    return _known_models_index().get(key, [])


def known_model(key: str, model_id: str) -> KnownModel | None:
    for m in _known_models(key):
        if m.model_id == model_id:
            return m
    return None
