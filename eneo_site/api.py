from django.contrib.admin.views.decorators import staff_member_required
from ninja import NinjaAPI

from credentials.api import router as credentials_router

from . import exceptions

api = NinjaAPI(
    title="Eneo LLM gateway API",
    version="1.0.0",
    description=(
        "Manage tenants' provider credentials, providers and models. Sysadmin routes take the super API key "
        "in the X-API-Key header. Secrets are write-only: responses show at most '...' + the last 4 characters."
    ),
    docs_decorator=staff_member_required,
    urls_namespace="api-v1",
)
exceptions.install(api)
api.add_router("/sysadmin", credentials_router)
