from django.db import models


class ProviderStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    INACTIVE = "inactive", "Inactive"


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    DOWN = "down", "Down"


class ModelType(models.TextChoices):
    INFERENCE = "inference", "Inference (chat/completion)"
    EMBEDDING = "embedding", "Embedding"
    RERANK = "rerank", "Rerank"


class ModelStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    INACTIVE = "inactive", "Inactive"


class AclRole(models.TextChoices):
    VIEWER = "viewer", "Viewer (may see and use)"
    EDITOR = "editor", "Editor (may also change)"
    MANAGER = "manager", "Manager (may also share)"
    OWNER = "owner", "Owner (may also delete)"
