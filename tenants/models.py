import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True, help_text="Display name of the organisation.")
    slug = models.SlugField(
        max_length=100, unique=True, help_text="Short unique identifier used in URLs and logs (letters, digits, -)."
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive tenants cannot call models; their data and credentials are kept."
    )
    monthly_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True,
        help_text="Spending cap per calendar month (UTC) in the models' price currency; calls are rejected once "
                  "it is reached. Empty = no cap.",
    )
    class CredentialPolicy(models.TextChoices):
        OWN = "own", "Own keys only: the tenant must configure a credential per provider type"
        INHERIT = "inherit", "Inherit: the tenant's credential if it has one, else the shared key"

    credential_policy = models.CharField(
        max_length=10, choices=CredentialPolicy.choices, blank=True, default="",
        help_text="Empty: the instance default (TENANT_CREDENTIALS_ENABLED: true = own, false = inherit). A tenant "
                  "credential that exists but is invalid or undecryptable is an error under both: never a fallback.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def effective_credential_policy(self) -> str:
        """own or inherit: the tenant's setting, else the instance default."""
        from django.conf import settings

        if self.credential_policy:
            return self.credential_policy
        return self.CredentialPolicy.OWN if settings.TENANT_CREDENTIALS_ENABLED else self.CredentialPolicy.INHERIT


class TenantMembership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tenant_memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(
        max_length=20,
        choices=Role.choices,
        default=Role.MEMBER,
        help_text="Admins manage the tenant's providers, models and API keys; members use them.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="uniq_membership_user_tenant")]

    def __str__(self):
        return f"{self.user} in {self.tenant} ({self.role})"


class AuditEvent(models.Model):
    """Append-only record of a change. `changes` holds masked before/after values only."""

    actor = models.CharField(max_length=200, help_text="Who made the change: a username, 'super-api-key', or 'system'.")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=100, help_text="What happened, e.g. credential.set.")
    target_type = models.CharField(max_length=100)
    target_id = models.CharField(max_length=100, blank=True)
    target_repr = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    source = models.CharField(max_length=20, blank=True, help_text="admin, api, command or task.")
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["action", "-created_at"])]

    def __str__(self):
        return f"{self.action} {self.target_type}:{self.target_id} by {self.actor}"


class TenantApiKey(models.Model):
    """A tenant's API key for REST and the /v1 gateway. Stored as a lookup prefix + HMAC digest (never plaintext).

    Format shown once at creation: ``eneo_<prefix>_<secret>``.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, help_text="What the key is for, e.g. 'intranet chatbot'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Public lookup part of the key.")
    digest = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list, blank=True,
                              help_text="Allowed operations, e.g. aiProviders:ListAiProviders; '*' = all.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    is_active = models.BooleanField(default=True, help_text="Revoked keys are rejected immediately.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty = never expires.")
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant_id", "name"]
        verbose_name = "tenant API key"

    def __str__(self):
        return f"{self.name} (eneo_{self.prefix}_...)"

    def has_scope(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


class CatalogVersion(models.Model):
    """The gateway catalog's version: one row (pk 1), raised by every write that changes routing or authentication.

    Raising it locks the row until the bump's own small transaction commits, so versions become visible in order:
    a worker that reads version N has every change up to N (a sequence would not promise that). `epoch` changes
    when the row is created again (database restored or flushed): workers then reload everything.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField(default=0)
    epoch = models.UUIDField(default=uuid.uuid4)

    def __str__(self):
        return f"catalog version {self.version}"


class CatalogChange(models.Model):
    """What one catalog version changed: a tenant's data (keys, credentials, own providers and models, enablements),
    instance-level routing (tenant empty), or only a provider's health (the preferred order of candidates).
    Written by tenants.services.catalog_bump on commit; read by every gateway worker's catalog."""

    class Kind(models.TextChoices):
        DATA = "data", "Keys, tenants, credentials, providers or models"
        HEALTH = "health", "Provider health (candidate order)"

    version = models.BigIntegerField(db_index=True)
    tenant_id = models.UUIDField(null=True, blank=True, help_text="Empty = an instance-level change.")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.DATA)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["version", "id"]

    def __str__(self):
        return f"catalog v{self.version}: {self.kind} {self.tenant_id or 'instance'}"
