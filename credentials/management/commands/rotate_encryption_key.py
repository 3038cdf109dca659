from django.core.management.base import BaseCommand

from credentials.rotation import encrypted_models, rotate_all


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted column with ENCRYPTION_KEY. Put the new key in ENCRYPTION_KEY and the old "
        "one(s) in ENCRYPTION_KEYS_OLD, run this (it can be interrupted and run again), then drop the old keys."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, batch_size, **options):
        tables = ", ".join(f"{m._meta.label} ({', '.join(f.name for f in fs)})" for m, fs in encrypted_models())
        self.stdout.write(f"Encrypted columns: {tables}")

        def progress(model, last_pk, report):
            self.stdout.write(f"  {model._meta.label} up to id {last_pk}: rotated={report.rotated} "
                              f"current={report.current} failed={report.failed}")

        report = rotate_all(batch_size=batch_size, on_batch=progress)
        self.stdout.write(
            f"Done: {report.rotated} value(s) re-encrypted, {report.current} already current, "
            f"{report.failed} could not be decrypted."
        )
        for label in report.failures:
            self.stderr.write(f"  cannot decrypt (left untouched): {label}")
        if report.failed:
            self.stderr.write(
                "Some values could not be decrypted with ENCRYPTION_KEY or ENCRYPTION_KEYS_OLD. Add the missing "
                "old key to ENCRYPTION_KEYS_OLD and run again, or replace those credentials."
            )
            raise SystemExit(1)
