"""ninja schemas of the provider-types and ai-providers APIs.

In schemas forbid unknown fields (a typo is a 422, not a silently ignored setting) and NUL characters.
Out schemas list their fields explicitly and never carry a key, a config or a model_config value: only
`has_config`, key counts and masked forms ('...' + last 4).
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Optional
from uuid import UUID

from ninja import Field, Schema
from pydantic import ConfigDict

from credentials.masking import mask_last4
from credentials.provider_rules import setting_fields
from tenants.schemas import NoNulIn

from providers.choices import HealthStatus, ModelStatus, ModelType, ProviderStatus

MAX_INT = 2_147_483_647  # PositiveIntegerField's range on PostgreSQL: larger values are a 422, not a 500


def _count(description: str = ""):
    return Field(None, ge=0, le=MAX_INT, description=description)


def _cost():
    return Field(None, ge=0, max_digits=12, decimal_places=4, description="Price per 1M tokens (null = LiteLLM's map).")


def _four_places(value: Decimal | None) -> Decimal | None:
    """Prices as stored (4 decimal places), also before a new row has been read back."""
    return None if value is None else Decimal(value).quantize(Decimal("0.0001"))


class InSchema(NoNulIn):
    """Base of request bodies: unknown fields and NUL characters (nested ones included) are rejected with a 422."""

    model_config = ConfigDict(extra="forbid")


# --- Provider types (registry) -----------------------------------------------------------------------------

class FieldSpecOut(Schema):
    name: str = Field(..., description="api_key, base_url and api_version are fields of the create body (a tenant "
                                       "credential calls base_url `endpoint`); every other name is a key of "
                                       "`config` (a tenant credential's `extra`).")
    label: str
    required: bool
    secret: bool = Field(..., description="Write-only: never returned by the API.")
    kind: str = Field(..., description="text, password, select, json (a JSON object, e.g. a service-account key) "
                                       "or file.")
    options: list[str] = Field(..., description="The allowed values of a select.")
    default: Optional[str] = None
    placeholder: str
    operator_only: bool = Field(..., description="Only sysadmins, only on instance-level providers (settings that "
                                                 "use the server's own identity).")
    stored_in: str = Field(..., description="column (its own field) or config (the provider's settings).")
    help: str

    @staticmethod
    def resolve_stored_in(field) -> str:
        return "config" if field.is_setting else "column"


class KnownModelOut(Schema):
    model_id: str = Field(..., description="Provider-side model identifier.")
    model_type: str = Field(..., description="inference, embedding or rerank.")
    context_window: Optional[int]
    max_output_tokens: Optional[int]
    supports_vision: bool
    supports_tools: bool
    supports_reasoning: bool
    supports_json_mode: bool
    input_cost_per_million: Optional[Decimal]
    output_cost_per_million: Optional[Decimal]


class ProviderTypeOut(Schema):
    key: str = Field(..., description="The provider_type value to send when creating a provider.")
    label: str
    litellm_prefix: str = Field(..., description="Prefix of LiteLLM model strings, e.g. 'azure' in azure/gpt-4o.")
    fields: list[FieldSpecOut] = Field(..., description="Fields this type takes; `required` ones must be sent.")
    lists_models: bool = Field(..., description="Models can be discovered from the server.")
    models_entered_by_deployment: bool = Field(..., description="Models are deployment names (Azure).")
    notes: str
    known_model_count: int = Field(..., description="Models LiteLLM's registry knows for this type.")

    @staticmethod
    def resolve_known_model_count(spec) -> int:
        return len(spec.known_models())


class ProviderTypeDetailOut(ProviderTypeOut):
    known_models: list[KnownModelOut] = Field(..., description="LiteLLM's registry entries for this type.")

    @staticmethod
    def resolve_known_models(spec) -> list:
        return spec.known_models()


# --- Models ------------------------------------------------------------------------------------------------

class _ModelFields(InSchema):
    display_label: Optional[str] = Field(None, max_length=200, description="Name shown to users.")
    alias: Optional[str] = Field(None, max_length=100,
                                 description="Shared name of comparable models across providers (a slug).")
    model_type: Optional[ModelType] = Field(None, description="Default: from LiteLLM's registry, else inference.")
    context_window: Optional[int] = _count("Max input tokens.")
    max_output_tokens: Optional[int] = _count()
    supports_vision: Optional[bool] = None
    supports_tools: Optional[bool] = None
    supports_reasoning: Optional[bool] = None
    supports_json_mode: Optional[bool] = None
    supports_system_prompt: Optional[bool] = None
    supports_streaming: Optional[bool] = None
    drop_unsupported_params: Optional[bool] = Field(
        None, description="Drop request parameters the model does not support instead of answering 400 "
                          "unsupported_parameter (default: false, refuse).")
    input_cost_per_million: Optional[Decimal] = _cost()
    output_cost_per_million: Optional[Decimal] = _cost()
    instance_wide: Optional[bool] = Field(None, description="Offered to everyone who can see the provider.")
    status: Optional[ModelStatus] = None
    model_config_: Optional[dict[str, Any]] = Field(
        None, alias="model_config", description="Extra call parameters; stored encrypted, write-only.")


class ModelIn(_ModelFields):
    """A model to add. Unset capabilities, context window and prices come from LiteLLM's registry."""

    model_id: str = Field(..., min_length=1, max_length=200,
                          description="Provider-side identifier (Azure: the deployment name).")


class ModelPatch(_ModelFields):
    """Only the fields sent change. model_config replaces the stored one (null clears it)."""

    model_id: Optional[str] = Field(None, min_length=1, max_length=200)


class ModelOut(Schema):
    id: int = Field(..., description="The model's id within the API (model_pk in paths).")
    provider_id: str = Field(..., description="Public id of the provider (aip_...).")
    model_id: str
    display_label: str
    alias: str
    model_type: str
    context_window: Optional[int]
    max_output_tokens: Optional[int]
    supports_vision: bool
    supports_tools: bool
    supports_reasoning: bool
    supports_json_mode: bool
    supports_system_prompt: bool
    supports_streaming: bool
    drop_unsupported_params: bool
    input_cost_per_million: Optional[Decimal] = Field(..., description="Decimal string; null = LiteLLM's map.")
    output_cost_per_million: Optional[Decimal] = Field(..., description="Decimal string; null = LiteLLM's map.")
    instance_wide: bool
    status: str
    vanished_at: Optional[datetime] = Field(..., description="When discovery stopped finding it at the provider.")
    has_config: bool = Field(..., description="Whether a model_config is stored (its values are never returned).")
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_input_cost_per_million(model) -> Decimal | None:
        return _four_places(model.input_cost_per_million)

    @staticmethod
    def resolve_output_cost_per_million(model) -> Decimal | None:
        return _four_places(model.output_cost_per_million)

    @staticmethod
    def resolve_provider_id(model) -> str:
        return model.provider.public_id

    @staticmethod
    def resolve_has_config(model) -> bool:
        return model.model_config is not None


# --- Providers ---------------------------------------------------------------------------------------------

def _settings(provider) -> dict:
    from providers.services import provider_settings

    return {k: v for k, v in provider_settings(provider).items() if v not in (None, "")}


def _is_secret(provider, name: str) -> bool:
    spec = setting_fields(provider.provider_type).get(name)
    return spec is None or spec.secret


class _ProviderFields(InSchema):
    base_url: Optional[str] = Field(None, max_length=500, description="API base URL (required for Azure and "
                                                                      "most self-hosted servers).")
    api_version: Optional[str] = Field(None, max_length=50, description="API version (Azure).")
    config: Optional[dict[str, Any]] = Field(None, description="The type's settings (GET /provider-types/{type}: "
                                                               "the fields stored in config, e.g. aws_region_name); "
                                                               "stored encrypted; secret ones write-only. Replaces "
                                                               "the stored settings as a whole.")
    capabilities: Optional[dict[str, bool]] = Field(
        None, description="Flags: system_prompt, json_mode, reasoning, vision, tools, streaming.")
    rpm: Optional[int] = _count("Requests per minute (null = no limit).")
    tpm: Optional[int] = _count("Tokens per minute (null = no limit).")
    max_concurrency: Optional[int] = _count("Calls in flight at once (null = no limit).")


class ProviderIn(_ProviderFields):
    """A new provider, optionally with its first key and its models (all or nothing)."""

    name: str = Field(..., min_length=1, max_length=200, description="Unique within the tenant.")
    provider_type: str = Field(..., max_length=64, description="A type from GET /provider-types (vllm = "
                                                               "hosted_vllm).")
    status: ProviderStatus = ProviderStatus.ACTIVE
    api_key: Optional[str] = Field(None, max_length=4096, description="The provider's API key: stored encrypted, "
                                                                      "write-only.")
    key_label: str = Field("", max_length=100, description="Label of that key, e.g. 'prod 2026-11'.")
    models: list[ModelIn] = Field(default_factory=list, max_length=500, description="Models to add with it.")
    tenant_id: Optional[UUID] = Field(None, description="Sysadmin only: owning tenant (null = instance level). "
                                                        "A tenant key always creates in its own tenant.")
    instance_wide: bool = Field(False, description="Sysadmin only: visible to every tenant (instance level only).")


class ProviderPatch(_ProviderFields):
    """Only the fields sent change. `config` replaces the stored config (null clears it)."""

    name: Optional[str] = Field(None, min_length=1, max_length=200)
    status: Optional[ProviderStatus] = None
    instance_wide: Optional[bool] = None


class ProviderFilters(NoNulIn):
    provider_type: Optional[str] = Field(None, max_length=64, description="Only this type (vllm = hosted_vllm).")
    status: Optional[ProviderStatus] = None
    health_status: Optional[HealthStatus] = None
    q: Optional[str] = Field(None, max_length=200, description="Name contains (case-insensitive).")


class HealthOut(Schema):
    status: str = Field(..., description="unknown, healthy, degraded or down.")
    checked_at: Optional[datetime]
    latency_ms: Optional[int]
    error: str = Field(..., description="Last error, with secrets masked.")


class ProviderOut(Schema):
    id: str = Field(..., description="Public id (aip_...).")
    name: str
    provider_type: str
    tenant_id: Optional[UUID] = Field(..., description="Owning tenant; null = instance level.")
    base_url: str
    api_version: str
    capabilities: dict[str, bool]
    instance_wide: bool
    status: str
    rpm: Optional[int]
    tpm: Optional[int]
    max_concurrency: Optional[int]
    health: HealthOut
    has_config: bool = Field(..., description="Whether settings are stored.")
    settings: dict[str, Any] = Field(..., description="The non-secret settings (region, project, ...).")
    secret_settings: list[str] = Field(..., description="Names of the secret settings that are set (never values).")
    keys_count: int
    active_key_last4: Optional[str] = Field(..., description="The key in use, masked ('...abcd'); null = none.")
    models_count: int
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_id(provider) -> str:
        return provider.public_id

    @staticmethod
    def resolve_health(provider) -> dict:
        return {"status": provider.health_status, "checked_at": provider.health_checked_at,
                "latency_ms": provider.health_latency_ms, "error": provider.health_error}

    @staticmethod
    def resolve_has_config(provider) -> bool:
        return provider.config is not None

    @staticmethod
    def resolve_settings(provider) -> dict:
        return {k: v for k, v in _settings(provider).items() if not _is_secret(provider, k)}

    @staticmethod
    def resolve_secret_settings(provider) -> list[str]:
        return sorted(k for k in _settings(provider) if _is_secret(provider, k))

    @staticmethod
    def resolve_active_key_last4(provider) -> str | None:
        last4 = provider.active_key_last4
        return None if last4 is None else mask_last4(last4)


# --- Keys and enablement -----------------------------------------------------------------------------------

class KeyIn(InSchema):
    secret: str = Field(..., min_length=1, max_length=4096, description="The API key: stored encrypted, write-only.")
    label: str = Field("", max_length=100, description="What this key is, e.g. 'prod 2026-11'.")
    is_active: bool = Field(True, description="Used for calls right away (the newest active key wins).")


class KeyPatch(InSchema):
    label: Optional[str] = Field(None, max_length=100)
    is_active: Optional[bool] = Field(None, description="false = never used again (rotation: disable the old key).")


class KeyOut(Schema):
    id: int
    label: str
    masked: str = Field(..., description="'...' + the last 4 characters ('***' for very short keys).")
    is_active: bool
    created_at: datetime
    last_used_at: Optional[datetime]


class EnablementOut(Schema):
    provider_id: str
    model_pk: int
    tenant_id: UUID
    enabled: bool
