import pytest
from cryptography.fernet import Fernet

from credentials.models import TenantCredential
from credentials.resolution import (CredentialInvalid, CredentialMissing, CredentialUndecryptable, ResolvedCredential,
                                    credential_resolve)
from credentials.services import credential_set
from tenants.actors import SYSTEM


def provider_key():
    return ResolvedCredential(provider_type="openai", source="provider_key", api_key="sk-provider-own-key-5555")


def test_tenant_credential_wins(tenant, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-global-env-key-0000")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-key-1111",
                   endpoint="https://gw.example.org/v1")
    r = credential_resolve(tenant=tenant, provider_type="openai", provider_fallback=provider_key)
    assert (r.source, r.api_key, r.api_base) == ("tenant", "sk-tenant-key-1111", "https://gw.example.org/v1")
    assert "sk-tenant-key-1111" not in repr(r) and "...1111" in repr(r)


def test_other_tenants_credential_is_never_used(tenant, other_tenant, settings):
    settings.TENANT_CREDENTIALS_ENABLED = True
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-a-key-1111")
    with pytest.raises(CredentialMissing):
        credential_resolve(tenant=other_tenant, provider_type="openai")


def test_shared_mode_falls_back_to_provider_key_then_env(tenant, monkeypatch, settings):
    settings.TENANT_CREDENTIALS_ENABLED = False
    assert credential_resolve(tenant=tenant, provider_type="openai", provider_fallback=provider_key).source == "provider_key"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-global-env-key-0000")
    r = credential_resolve(tenant=tenant, provider_type="openai", provider_fallback=lambda: None)
    assert (r.source, r.api_key) == ("global_env", "sk-global-env-key-0000")


def test_shared_mode_with_nothing_configured_names_the_env_var(tenant):
    with pytest.raises(CredentialMissing, match="OPENAI_API_KEY"):
        credential_resolve(tenant=tenant, provider_type="openai")


def test_strict_mode_without_credential_errors(tenant, monkeypatch, settings):
    settings.TENANT_CREDENTIALS_ENABLED = True
    monkeypatch.setenv("OPENAI_API_KEY", "sk-global-env-key-0000")
    with pytest.raises(CredentialMissing) as exc:
        credential_resolve(tenant=tenant, provider_type="openai", provider_fallback=provider_key)
    msg = str(exc.value)
    assert msg.startswith("No API key configured for provider 'openai'")
    assert "Tenant-specific credentials are enabled" in msg and "acme" in msg
    assert "sk-global" not in msg


def test_undecryptable_credential_errors_and_does_not_fall_back(tenant, monkeypatch, settings):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-global-env-key-0000")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-key-1111")
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(CredentialUndecryptable) as exc:
        credential_resolve(tenant=tenant, provider_type="openai", provider_fallback=provider_key)
    assert "Failed to decrypt credential for provider 'openai'" in str(exc.value)
    assert "acme" in str(exc.value) and "sk-" not in str(exc.value)


def test_incomplete_credential_errors_and_does_not_fall_back(tenant, monkeypatch):
    monkeypatch.setenv("AZURE_API_KEY", "azure-global-key-0000")
    monkeypatch.setenv("AZURE_API_BASE", "https://global.openai.azure.com")
    cred = credential_set(actor=SYSTEM, tenant=tenant, provider_type="azure", api_key="azure-tenant-key",
                          endpoint="https://t.openai.azure.com", api_version="2024-06-01", deployment_name="d1")
    TenantCredential.objects.filter(pk=cred.pk).update(deployment_name="")  # e.g. a legacy row
    with pytest.raises(CredentialInvalid, match="missing: deployment_name"):
        credential_resolve(tenant=tenant, provider_type="azure")


def test_azure_credential_carries_version_and_deployment(tenant):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="azure", api_key="azure-tenant-key",
                   endpoint="https://t.openai.azure.com", api_version="2024-06-01", deployment_name="gpt4o-prod")
    r = credential_resolve(tenant=tenant, provider_type="azure")
    assert r.litellm_kwargs() == {"api_key": "azure-tenant-key", "api_base": "https://t.openai.azure.com",
                                  "api_version": "2024-06-01"}
    assert r.deployment_name == "gpt4o-prod"


def test_vllm_without_endpoint_uses_vllm_model_url(tenant, monkeypatch):
    monkeypatch.setenv("VLLM_MODEL_URL", "http://vllm.internal:8000/v1")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="vllm", api_key="vllm-key-1234")
    r = credential_resolve(tenant=tenant, provider_type="hosted_vllm")
    assert r.api_base == "http://vllm.internal:8000/v1" and r.source == "tenant"


def test_global_vllm_needs_only_the_url(tenant, monkeypatch):
    monkeypatch.setenv("VLLM_MODEL_URL", "http://vllm.internal:8000/v1")
    r = credential_resolve(tenant=tenant, provider_type="hosted_vllm")
    assert (r.source, r.api_base, r.api_key) == ("global_env", "http://vllm.internal:8000/v1", None)


def test_resolution_is_one_query(tenant, django_assert_num_queries):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-key-1111")
    with django_assert_num_queries(1):
        credential_resolve(tenant=tenant, provider_type="openai")
