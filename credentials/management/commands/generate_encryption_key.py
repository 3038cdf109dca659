from django.core.management.base import BaseCommand

from credentials.crypto import generate_key


class Command(BaseCommand):
    help = "Print a new Fernet key for ENCRYPTION_KEY (works before any key is configured)."

    def handle(self, *args, **options):
        self.stdout.write(generate_key())
