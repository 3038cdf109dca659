from __future__ import annotations

from datetime import datetime
from typing import Any, Optional
from uuid import UUID

from ninja import Field, Schema

from tenants.schemas import NoNulIn


class CredentialIn(NoNulIn):
    api_key: str = Field(..., description="The provider API key. Stored encrypted; never returned.", max_length=4096)
    endpoint: Optional[str] = Field(None, description="Base URL (required for azure).", max_length=500)
    api_version: Optional[str] = Field(None, description="API version (required for azure).", max_length=50)
    deployment_name: Optional[str] = Field(None, description="Deployment name (required for azure).", max_length=200)
    extra: Optional[dict[str, Any]] = Field(None, description="Further provider settings, stored encrypted.")


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


class CredentialListOut(Schema):
    tenant_id: UUID
    credentials: list[CredentialOut]


class CredentialDeleteOut(Schema):
    tenant_id: UUID
    provider: str
    deleted: bool
    message: str

