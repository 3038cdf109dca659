from django.contrib import admin
from django.http import JsonResponse
from django.urls import path

from providers.gateway.api import openai_api

from .api import api


def healthz(request):
    return JsonResponse({"status": "ok"})


admin.site.site_header = "Eneo LLM gateway"
admin.site.site_title = "Eneo LLM gateway admin"
admin.site.index_title = "Providers, models, tenants and credentials"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("v1/", openai_api.urls),
    path("healthz", healthz),
]
