"""LiteLLM, configured once for this project: call it through `from .llm import litellm`.

Imported where a call is made, not at start-up: importing LiteLLM takes about 2 s, which every manage.py
command, the beat scheduler and the admin would otherwise pay for nothing.
"""
import litellm

litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
litellm.telemetry = False
litellm.success_callback, litellm.failure_callback, litellm.callbacks = [], [], []

__all__ = ["litellm"]
