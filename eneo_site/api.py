from django.contrib.admin.views.decorators import staff_member_required
from ninja import NinjaAPI

from credentials.api import router as credentials_router
from providers.api.providers import router as ai_providers_router
from providers.api.providers import types_router as provider_types_router
from providers.api.checks import router as checks_router
from providers.api.checks import tasks_router
from providers.api.usage import router as usage_router
from tenants.api import router as tenant_api_keys_router
from tenants.tenants_api import router as tenants_router
from tenants.audit_api import router as audit_router
from tenants.parsers import JsonParser

from . import exceptions

class RestApi(NinjaAPI):
    """Its OpenAPI schema also names the errors every operation with a body can answer (exceptions.BODY_ERRORS)."""

    def get_openapi_schema(self, *args, **kwargs):
        return exceptions.document_common_errors(super().get_openapi_schema(*args, **kwargs))


api = RestApi(
    title="Eneo LLM gateway API",
    version="1.0.0",
    description=(
        "Manage tenants' provider credentials, providers and models. Sysadmin routes take the super API key "
        "in the X-API-Key header; /ai-providers and /provider-types take a tenant API key "
        "(Authorization: Bearer eneo_... or X-API-Key: eneo_...) or the super key. "
        "Secrets are write-only: responses show at most '...' + the last 4 characters."
    ),
    docs_decorator=staff_member_required,
    urls_namespace="api-v1",
    parser=JsonParser(),
)
exceptions.install(api)
api.add_router("/sysadmin", tenants_router)
api.add_router("/sysadmin", credentials_router)
api.add_router("/sysadmin", tenant_api_keys_router)
api.add_router("/ai-providers", ai_providers_router)
api.add_router("/provider-types", provider_types_router)
api.add_router("/ai-providers", checks_router)
api.add_router("/tasks", tasks_router)
api.add_router("/usage", usage_router)
api.add_router("/audit-events", audit_router)
