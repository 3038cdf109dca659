from __future__ import annotations

from datetime import datetime
from typing import Any, Optional
from uuid import UUID

from ninja import Field, Schema

from tenants.schemas import NoNulIn


class CredentialIn(NoNulIn):
    api_key: str = Field("", description="The provider API key. Stored encrypted; never returned. May be empty for "
                                         "types that authenticate with settings (bedrock's AWS keys, vertex_ai's "
                                         "service account).", max_length=4096)
    endpoint: Optional[str] = Field(None, description="Base URL (required for azure).", max_length=500)
    api_version: Optional[str] = Field(None, description="API version (required for azure).", max_length=50)
    deployment_name: Optional[str] = Field(None, description="Deployment name (required for azure).", max_length=200)
    extra: Optional[dict[str, Any]] = Field(None, description="The type's further settings (GET "
                                                              "/api/v1/provider-types/{type}: fields that are not "
                                                              "api_key, base_url or api_version), stored encrypted.")


class CredentialSetOut(Schema):
    tenant_id: UUID
    provider: str
    masked_key: str = Field(..., description="'...' + the last 4 characters, or '***' for very short keys.")
    message: str
    set_at: datetime


class CredentialOut(Schema):
    provider: str
    masked_key: str
    configured_at: datetime
    updated_at: datetime
    encryption_status: str = Field(..., description="encrypted, plaintext (legacy row) or undecryptable.")
    endpoint: str
    api_version: str
    deployment_name: str
    has_extra: bool
    settings: dict[str, Any] = Field(..., description="The non-secret settings (region, project, ...).")
    secret_settings: list[str] = Field(..., description="Names of the secret settings that are set (never values).")


class CredentialListOut(Schema):
    tenant_id: UUID
    credentials: list[CredentialOut]


class CredentialDeleteOut(Schema):
    tenant_id: UUID
    provider: str
    deleted: bool
    message: str

