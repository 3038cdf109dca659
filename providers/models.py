import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from credentials.fields import EncryptedJSONField, EncryptedTextField
from credentials.masking import mask_last4
from tenants.models import Tenant

from providers.choices import HealthStatus, ModelStatus, ModelType, ProviderStatus


def new_public_id() -> str:
    return "aip_" + secrets.token_hex(12)


class Provider(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=new_public_id, editable=False,
                                 help_text="Stable public identifier used by the REST API (aip_...).")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="providers",
                               help_text="Owning tenant. Empty = an instance-level provider managed by sysadmins.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text="The user who created it; always sees and manages it.")
    name = models.CharField(max_length=200, help_text="Unique within the tenant (or among instance-level providers).")
    provider_type = models.CharField(max_length=64, db_index=True,
                                     help_text="LiteLLM provider type (openai, azure, anthropic, hosted_vllm, ...).")
    base_url = models.URLField(max_length=500, blank=True,
                               help_text="API base URL. Required for self-hosted servers and Azure; optional otherwise.")
    api_version = models.CharField(max_length=50, blank=True, help_text="API version (Azure).")
    config = EncryptedJSONField(null=True, blank=True, help_text="Further provider settings, stored encrypted.")
    capabilities = models.JSONField(default=dict, blank=True,
                                    help_text="Flags: system_prompt, json_mode, reasoning, vision, tools, streaming.")
    instance_wide = models.BooleanField(default=False,
                                        help_text="Visible to every user of every tenant. Only for instance-level "
                                                  "providers (no tenant).")
    status = models.CharField(max_length=20, choices=ProviderStatus.choices, default=ProviderStatus.ACTIVE,
                              db_index=True, help_text="Inactive providers offer no models to callers.")
    rpm = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute allowed (empty = no limit).")
    tpm = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute allowed (empty = no limit).")
    max_concurrency = models.PositiveIntegerField(null=True, blank=True,
                                                  help_text="Calls in flight at once (empty = no limit).")
    health_status = models.CharField(max_length=20, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN,
                                     db_index=True, help_text="Result of the last connectivity/health check.")
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    health_error = models.CharField(max_length=500, blank=True, help_text="Last error, with secrets masked.")
    env_source = models.CharField(max_length=40, blank=True, editable=False,
                                  help_text="Set on providers defined by environment variables (ensure_env_providers); "
                                            "their key stays in the environment.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="uniq_provider_tenant_name"),
            models.UniqueConstraint(fields=["name"], condition=models.Q(tenant__isnull=True),
                                    name="uniq_provider_instance_name"),
            models.UniqueConstraint(fields=["env_source"], condition=~models.Q(env_source=""),
                                    name="uniq_provider_env_source"),
        ]
        permissions = [("share_provider", "Can share provider with users and groups")]

    def __str__(self):
        return self.name

    def clean(self):
        if self.instance_wide and self.tenant_id:
            raise ValidationError({"instance_wide": "Only instance-level providers (no tenant) can be instance-wide; "
                                                    "a tenant's provider is never shown to other tenants."})


class ProviderKey(models.Model):
    """One of a provider's API keys. Several keys = rotation without downtime: add, validate, disable old."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="keys")
    label = models.CharField(max_length=100, blank=True, help_text="What this key is, e.g. 'prod 2026-11'.")
    secret = EncryptedTextField(help_text="Encrypted at rest; shown only as ...last4.")
    last4 = models.CharField(max_length=4, blank=True, editable=False)
    is_active = models.BooleanField(default=True, help_text="Only active keys are used; the newest active one first.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-is_active", "-created_at", "-id"]

    def __str__(self):
        return f"{self.label or 'key'} ({self.masked})"

    @property
    def masked(self) -> str:
        return mask_last4(self.last4)


class AIModel(models.Model):
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    model_id = models.CharField(max_length=200, help_text="The provider-side identifier (for Azure: the deployment name).")
    display_label = models.CharField(max_length=200, blank=True, help_text="Name shown to users.")
    alias = models.SlugField(max_length=100, blank=True, db_index=True,
                             help_text="Shared name for comparable models across providers, e.g. 'gpt-4o'. Callers "
                                       "may ask for the alias; the gateway picks a healthy model that has it.")
    model_type = models.CharField(max_length=20, choices=ModelType.choices, default=ModelType.INFERENCE)
    model_config = EncryptedJSONField(null=True, blank=True,
                                      help_text="Extra parameters sent with each call, stored encrypted.")
    context_window = models.PositiveIntegerField(null=True, blank=True, help_text="Max input tokens.")
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    supports_vision = models.BooleanField(default=False)
    supports_tools = models.BooleanField(default=False)
    supports_reasoning = models.BooleanField(default=False)
    supports_json_mode = models.BooleanField(default=False)
    supports_system_prompt = models.BooleanField(default=True)
    supports_streaming = models.BooleanField(default=True)
    drop_unsupported_params = models.BooleanField(
        default=False, help_text="Drop request parameters the model does not support (per LiteLLM) instead of "
                                 "answering 400 unsupported_parameter.")
    input_cost_per_million = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True,
                                                 help_text="Price per 1M input tokens (empty = LiteLLM's cost map).")
    output_cost_per_million = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True,
                                                  help_text="Price per 1M output tokens (empty = LiteLLM's cost map).")
    instance_wide = models.BooleanField(default=True, help_text="Offered to everyone who can see the provider. "
                                                                "Off = only to its managers and ACL grantees.")
    status = models.CharField(max_length=20, choices=ModelStatus.choices, default=ModelStatus.ACTIVE, db_index=True)
    vanished_at = models.DateTimeField(null=True, blank=True,
                                       help_text="Set when discovery no longer finds the model at the provider.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider_id", "model_id"]
        verbose_name = "AI model"
        constraints = [models.UniqueConstraint(fields=["provider", "model_id"], name="uniq_model_provider_model_id")]
        permissions = [("share_aimodel", "Can share model with users and groups")]

    def __str__(self):
        return self.display_label or self.model_id


class TenantModelEnablement(models.Model):
    """Which instance-level models a tenant may use (a tenant's own providers' models need no enablement)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="model_enablements")
    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="tenant_enablements")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "model"], name="uniq_enablement_tenant_model")]

    def __str__(self):
        return f"{self.model} for {self.tenant}"


class FavouriteProviderType(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="favourite_provider_types")
    provider_type = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "provider_type"], name="uniq_favourite_type")]


# django-guardian direct-FK permission tables (deleted with their object, unlike the generic ones).
class ProviderUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Provider, on_delete=models.CASCADE)


class ProviderGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Provider, on_delete=models.CASCADE)


class AIModelUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(AIModel, on_delete=models.CASCADE)


class AIModelGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(AIModel, on_delete=models.CASCADE)


class ProviderCheck(models.Model):
    """History of connectivity tests, model validations, health checks and discoveries (masked messages)."""

    class Kind(models.TextChoices):
        TEST = "test", "Connectivity test"
        VALIDATE = "validate", "Model validation"
        HEALTH = "health", "Scheduled health check"
        DISCOVER = "discover", "Model discovery"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="checks")
    model = models.ForeignKey(AIModel, null=True, blank=True, on_delete=models.CASCADE, related_name="checks")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                               help_text="Whose credential was used (empty = the provider's own key).")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    ok = models.BooleanField(null=True)
    status = models.CharField(max_length=20, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True, help_text="Outcome, with secrets masked.")
    details = models.JSONField(default=dict, blank=True)
    task_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["provider", "-created_at"])]

    def __str__(self):
        return f"{self.get_kind_display()} of {self.provider}: {self.message or self.state}"


class UsageRecord(models.Model):
    """One gateway call: who, which model, tokens, cost, latency, outcome. Never a key or a prompt."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("tenants.TenantApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.ForeignKey(AIModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requested_model = models.CharField(max_length=200, help_text="What the caller asked for (alias, id, ...).")
    endpoint = models.CharField(max_length=30, help_text="chat.completions or embeddings.")
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first token (streamed calls).")
    status = models.CharField(max_length=20, help_text="ok, error (upstream), client_closed or refused.")
    http_status = models.PositiveSmallIntegerField(default=200)
    error_type = models.CharField(max_length=60, blank=True)
    streamed = models.BooleanField(default=False)
    tokens_estimated = models.BooleanField(
        default=False, db_default=False,
        help_text="The provider reported no usage: tokens were counted with LiteLLM's token counter.")
    request_id = models.CharField(max_length=64, blank=True, default="", db_default="", db_index=True,
                                  help_text="The call's X-Request-Id (the caller's, or the one the gateway gave it).")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        # (created_at, id): the list newest first and its keyset pages, and retention (oldest first);
        # (tenant, created_at, id): the same for one tenant.
        indexes = [
            models.Index(fields=["created_at", "id"], name="usage_created_id"),
            models.Index(fields=["tenant", "created_at", "id"], name="usage_tenant_created_id"),
            models.Index(fields=["model", "-created_at"]),
            models.Index(fields=["api_key", "-created_at"]),
        ]

    def __str__(self):
        return f"{self.requested_model} for {self.tenant_id} at {self.created_at:%Y-%m-%d %H:%M:%S}"


LATENCY_BUCKETS_MS = (25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 60000)
"""Upper bounds (inclusive) of UsageHourly's latency histogram: lat_00 counts calls up to 25 ms, lat_01 those over 25
and up to 50 ms, ..., lat_15 those over 60 s."""
LATENCY_FIELDS = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BUCKETS_MS) + 1))


class UsageHourly(models.Model):
    """Usage per hour (UTC), tenant, API key, provider, model, requested model, endpoint, streamed and status: the
    roll-up that summaries, budgets and the dashboard read (providers/rollups.py). Written by the usage writer in the
    transaction that inserts the raw records, so the two never disagree; kept when raw records expire.

    The key, provider and model are plain ids (0 = none) so the unique key holds on every database (NULLs are never
    equal) and a deleted key, provider or model leaves the hours it was used in as they were."""

    hour = models.DateTimeField(help_text="Start of the hour (UTC).")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key_id = models.BigIntegerField(default=0)
    provider_id = models.BigIntegerField(default=0)
    model_id = models.BigIntegerField(default=0)
    requested_model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=30)
    streamed = models.BooleanField(default=False)
    status = models.CharField(max_length=20)
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="Calls with status error (upstream errors).")
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=8, default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    latency_ms_min = models.BigIntegerField(default=0)
    latency_ms_max = models.BigIntegerField(default=0)
    lat_00 = models.IntegerField(default=0)
    lat_01 = models.IntegerField(default=0)
    lat_02 = models.IntegerField(default=0)
    lat_03 = models.IntegerField(default=0)
    lat_04 = models.IntegerField(default=0)
    lat_05 = models.IntegerField(default=0)
    lat_06 = models.IntegerField(default=0)
    lat_07 = models.IntegerField(default=0)
    lat_08 = models.IntegerField(default=0)
    lat_09 = models.IntegerField(default=0)
    lat_10 = models.IntegerField(default=0)
    lat_11 = models.IntegerField(default=0)
    lat_12 = models.IntegerField(default=0)
    lat_13 = models.IntegerField(default=0)
    lat_14 = models.IntegerField(default=0)
    lat_15 = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(
            fields=["hour", "tenant", "api_key_id", "provider_id", "model_id", "requested_model", "endpoint",
                    "streamed", "status"], name="usage_hourly_key")]
        # (tenant, hour): one tenant's summaries and month spend; (hour): the dashboard and the all-tenant list.
        indexes = [models.Index(fields=["tenant", "hour"], name="usage_hourly_tenant_hour")]

    def __str__(self):
        return f"{self.requested_model} for {self.tenant_id} at {self.hour:%Y-%m-%d %H:00}"
