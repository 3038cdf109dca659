"""ASGI entry point (uvicorn eneo_site.asgi:application).

Static admin assets are served by Django's staticfiles handler, which only intercepts STATIC_URL paths.
"""
import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eneo_site.settings")
application = ASGIStaticFilesHandler(get_asgi_application())
