from django.db import models

from tenants.models import Tenant

from .fields import EncryptedJSONField, EncryptedTextField


class TenantCredential(models.Model):
    """A tenant's own credential for one provider type (bring your own key)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="credentials")
    provider_type = models.CharField(
        max_length=64, help_text="LiteLLM provider type, lower-case (e.g. openai, azure, anthropic, hosted_vllm)."
    )
    api_key = EncryptedTextField(help_text="Encrypted at rest; shown only as ...last4.")
    api_key_last4 = models.CharField(max_length=4, blank=True, editable=False)
    endpoint = models.URLField(
        max_length=500, blank=True, help_text="Base URL of the provider API (required for azure; optional otherwise)."
    )
    endpoint_approved = models.BooleanField(
        default=False, editable=False,
        help_text="The endpoint was set by a sysadmin, so it may be internal. Endpoints set by anyone else follow "
                  "the egress policy (public addresses or ENDPOINT_ALLOWED_HOSTS only).")
    api_version = models.CharField(max_length=50, blank=True, help_text="API version (required for azure).")
    deployment_name = models.CharField(max_length=200, blank=True, help_text="Deployment name (required for azure).")
    extra = EncryptedJSONField(null=True, blank=True, help_text="Further provider-specific settings, encrypted.")
    configured_at = models.DateTimeField(help_text="When the credential was last set (new on every replace).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant_id", "provider_type"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "provider_type"], name="uniq_credential_tenant_provider")
        ]

    def __str__(self):
        return f"{self.tenant} / {self.provider_type}"

    @property
    def masked_key(self) -> str:
        from .masking import mask_last4

        return mask_last4(self.api_key_last4)

    @property
    def encryption_status(self) -> str:
        """encrypted, plaintext (legacy row) or undecryptable (no configured key opens it)."""
        if self.api_key is None:
            return "empty"
        if not self.api_key.is_encrypted:
            return "plaintext"
        return "encrypted" if self.api_key.can_decrypt() else "undecryptable"
