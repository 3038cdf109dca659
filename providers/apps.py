from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "providers"

    def ready(self):
        # LiteLLM is the only way to a provider: configure it once, quietly, with nothing sent anywhere.
        import litellm

        litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
        litellm.telemetry = False
        litellm.success_callback, litellm.failure_callback, litellm.callbacks = [], [], []
