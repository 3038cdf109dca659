from django.core.management.base import BaseCommand

from providers.bootstrap import ensure_env_providers
from tenants.actors import Actor


class Command(BaseCommand):
    help = ("Create or update instance-level providers from environment keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, "
            "AZURE_*, VLLM_MODEL_URL, ...). Idempotent: run it at every boot.")

    def handle(self, *args, **options):
        results = ensure_env_providers(actor=Actor(name="ensure_env_providers", source="command"))
        if not results:
            self.stdout.write("No provider keys in the environment; nothing to do.")
        for name, outcome in results:
            self.stdout.write(f"{name}: {outcome}")
