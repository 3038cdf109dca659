import os

# LiteLLM must never reach the internet at run time: its model cost map is read from the package.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

from .celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
