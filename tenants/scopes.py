"""The scopes a tenant API key can hold (TenantApiKey.scopes; '*' grants all, the super key has all).

The one list: the REST and gateway handlers check these values and the admin offers them with their labels.
"""
from enum import StrEnum


class Scope(StrEnum):
    LIST = "aiProviders:ListAiProviders"
    GET = "aiProviders:GetAiProvider"
    CREATE = "aiProviders:CreateAiProvider"
    UPDATE = "aiProviders:UpdateAiProvider"
    DELETE = "aiProviders:DeleteAiProvider"
    GATEWAY = "gateway:Use"
    USAGE = "usage:ReadUsage"
    AUDIT = "audit:ReadAuditEvents"


LABELS = {
    Scope.LIST: "List AI providers",
    Scope.GET: "Read one AI provider",
    Scope.CREATE: "Create AI providers",
    Scope.UPDATE: "Change AI providers",
    Scope.DELETE: "Delete AI providers",
    Scope.GATEWAY: "Call models through the /v1 gateway",
    Scope.USAGE: "Read the tenant's usage records (/api/v1/usage)",
    Scope.AUDIT: "Read the tenant's audit log (/api/v1/audit-events)",
}

# (value, label) choices for forms, every scope plus the wildcard.
CHOICES = tuple((scope.value, LABELS[scope]) for scope in Scope) + (
    ("*", "Everything (all scopes, present and future)"),)
